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


CHUNK_ROWS = 65536  # rows of X per float64 product: the Gram matrix is accumulated, never all of X̃ at once


def _chunks(x: torch.Tensor, r: torch.Tensor):
    for start in range(0, x.shape[0], CHUNK_ROWS):
        xs = x[start:start + CHUNK_ROWS].double()
        yield torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)], dim=1), \
            r[start:start + CHUNK_ROWS].double()


def fit_linear(x: torch.Tensor, residual: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(W, b, r2)`` minimising ``|x·W + b - residual|² + λ|[W; b]|²`` over the rows of the last dim:
    ``W`` is [in, out], ``b`` [out] (float32, on ``x``'s device), ``r2`` the fraction of the residual's
    variance explained. The normal equations are accumulated in float64 chunk by chunk and solved on the
    CPU with a rank-revealing least-squares driver (a singular Gram matrix at λ = 0 gives the
    minimum-norm solution, not an error)."""
    if x.shape[:-1] != residual.shape[:-1]:
        raise ValueError(f"inputs {tuple(x.shape)} and residuals {tuple(residual.shape)} have different rows")
    X, R = x.reshape(-1, x.shape[-1]), residual.reshape(-1, residual.shape[-1])
    gram = torch.zeros(X.shape[1] + 1, X.shape[1] + 1, dtype=torch.float64, device=X.device)
    rhs = torch.zeros(X.shape[1] + 1, R.shape[1], dtype=torch.float64, device=X.device)
    total_r = torch.zeros(R.shape[1], dtype=torch.float64, device=X.device)
    for x1, r in _chunks(X, R):
        gram += x1.T @ x1
        rhs += x1.T @ r
        total_r += r.sum(dim=0)
    if ridge > 0:
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.lstsq(gram.cpu(), rhs.cpu(), driver="gelsd").solution.to(X.device)
    mean_r = total_r / max(R.shape[0], 1)
    res_ss = tot_ss = 0.0
    for x1, r in _chunks(X, R):
        res_ss += float((r - x1 @ solution).pow(2).sum())
        tot_ss += float((r - mean_r).pow(2).sum())
    r2 = 1 - res_ss / tot_ss if tot_ss > 0 else 1.0
    return solution[:-1].float(), solution[-1].float(), r2
