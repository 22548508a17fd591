"""The LayerNorm affine step shared by the integer LayerNorm kernels (I-ViT, I-BERT, FQ-ViT).

The normalized integers ``y ≈ (x - μ)/σ · 2^30/√C`` (base scale ``√C/2^30``) take the float affine
``w·n + b`` as a per-channel output scale, as the published I-ViT/I-BERT code does, keeping the
weights in float: ``scale_c = base·|w_c|`` (``base`` where ``w_c = 0``) and
``out_c = sign(w_c)·y_c + round(b_c / scale_c)``, so ``out_c·scale_c ≈ w_c·n_c + b_c``.
"""

from __future__ import annotations

import math

import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import Arith
from vitquant.kernels.base import Scale

LN_OUT_SHIFT = 30  # base scale √C / 2^30
MAX_BIAS = 2**51  # |round(bias/scale_c)|, leaves room for |y| <= 2^30


def fold_affine(
    y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, arith: Arith
) -> tuple[torch.Tensor, Scale]:
    """Fold ``weight``/``bias`` [C] into the output of :func:`normalize` (base scale ``√C/2^30``).

    ``scale_c = base·|w_c|`` (``base`` where ``w_c = 0``), ``out = sign(w_c)·y + round(bias_c/scale_c)``;
    so ``out·scale_c ≈ w_c·y·base + bias_c``. ``|round(bias/scale)| <= 2^51`` (else ConfigError), so
    ``|out| <= 2^30 + 2^51``.
    """
    channels = y.shape[-1]
    w = torch.as_tensor(weight).detach().to(torch.float64).reshape(-1)
    b = torch.as_tensor(bias).detach().to(torch.float64).reshape(-1)
    if w.numel() != channels or b.numel() != channels:
        got = f"{w.numel()} and {b.numel()}"
        raise ConfigError(f"LayerNorm affine: needs {channels} weights and biases, got {got}")
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise ConfigError("LayerNorm weight and bias must be finite")
    base = math.sqrt(channels) / 2**LN_OUT_SHIFT
    mag = w.abs()
    out_scale = base * torch.where(mag > 0, mag, torch.ones_like(mag))
    bias_int = torch.round(b / out_scale)
    if bias_int.abs().max().item() > MAX_BIAS:
        raise ConfigError("LayerNorm bias too large for its weight: |bias/(√C/2^30·|w|)| exceeds 2^51")
    out = y * arith.tensor(torch.sign(w)) + arith.tensor(bias_int)
    return out, out_scale
