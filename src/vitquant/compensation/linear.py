"""The least-squares fit of QwT (Fu et al., "Quantization without Tears", CVPR 2025).

For one block with input ``X`` (tokens as rows, the quantized model's input to the block), the
quantized block's output ``Y_q`` and the full-precision block's output on the same input ``Y_f``, QwT
adds ``X·W + b`` to the quantized block and fits it to the residual ``R = Y_f - Y_q``:

    [W; b] = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀR,   X̃ = [X, 1],   λ = ridge · mean(diag X̃ᵀX̃)

(the published code solves the normal equations with λ = 0; a small ridge keeps the solve stable
when a channel of X is nearly constant). Solved in float64.
"""

from __future__ import annotations

import torch


def fit_linear(x: torch.Tensor, residual: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(W, b, r2)`` minimising ``|x·W + b - residual|² + λ|[W; b]|²`` over the rows of the last dim:
    ``W`` is [in, out], ``b`` [out] (float32), ``r2`` the fraction of the residual's variance explained."""
    if x.shape[:-1] != residual.shape[:-1]:
        raise ValueError(f"inputs {tuple(x.shape)} and residuals {tuple(residual.shape)} have different rows")
    X = x.reshape(-1, x.shape[-1]).double()
    R = residual.reshape(-1, residual.shape[-1]).double()
    X1 = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)
    gram = X1.T @ X1
    if ridge > 0:
        gram = gram + ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.lstsq(gram, X1.T @ R).solution
    fitted = X1 @ solution
    total = (R - R.mean(dim=0)).pow(2).sum()
    r2 = float(1 - (R - fitted).pow(2).sum() / total) if total > 0 else 1.0
    return solution[:-1].float(), solution[-1].float(), r2
