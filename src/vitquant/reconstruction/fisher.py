"""BRECQ's Fisher weighting of a unit's output error (Li et al., ICLR 2021, section 3.2).

BRECQ approximates the loss change caused by a block's output error ``Δz`` with the diagonal of the
Fisher information of the block output, estimated from squared gradients of the task loss:

    E[ Δzᵀ diag((∂L/∂z)²) Δz ]   ->   min  Σ_elements w ⊙ (f̂(x̂) - f(x))²,   w = (|∂L/∂z| + γ)²

``L`` is the KL divergence of the model's output from the full-precision output, per image,
``KL(softmax(fp) ‖ softmax(q))``, with the model quantized up to and including the unit (its calibrated
quantizers; the units before it as reconstructed) and in full precision after it, so ``∂L/∂z`` says
how much each element of this unit's output moves the prediction. ``γ = 1`` is BRECQ's damping; it keeps
elements with a vanishing gradient in the objective. BRECQ averages the KL over its batch of 32 images,
which scales its gradients by 1/32; here the KL is per image, so the weights do not depend on a batch
size. The weights are computed once per unit, before it trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: γ, added to |∂L/∂z| (BRECQ's damping)
FISHER_DAMPING = 1.0
CHUNK = 16  # images per forward-backward pass (the tail's activations are kept for the backward)


def kl_per_image(logits: torch.Tensor, fp_logits: torch.Tensor) -> torch.Tensor:
    """``Σ_images KL(softmax(fp_logits) ‖ softmax(logits))`` (summed over the images of the batch)."""
    return F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(fp_logits, dim=-1), log_target=True,
                    reduction="sum")


def fisher_weights(
    unit: nn.Module,
    inputs: torch.Tensor,
    tail: Sequence[nn.Module],
    fp_logits: torch.Tensor,
    damping: float = FISHER_DAMPING,
) -> torch.Tensor:
    """``w = (|∂L/∂z| + γ)²`` for every element of ``z = unit(inputs)``, where ``tail`` (the full-precision
    units after ``unit``, chained) maps ``z`` to logits and ``L`` is :func:`kl_per_image` against
    ``fp_logits``. Same shape as ``z``; ``unit`` and ``tail`` are not trained (no parameter gradient)."""
    if fp_logits.shape[0] != inputs.shape[0]:
        raise ValueError(f"{fp_logits.shape[0]} FP logits for {inputs.shape[0]} inputs")
    weights = []
    for x, target in zip(inputs.split(CHUNK), fp_logits.split(CHUNK)):
        with torch.no_grad():
            z = unit(x)
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = z
            for module in tail:
                logits = module(logits)
            (grad,) = torch.autograd.grad(kl_per_image(logits, target), z)
        weights.append((grad.abs() + damping) ** 2)
    return torch.cat(weights)
