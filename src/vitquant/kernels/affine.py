"""The LayerNorm affine step shared by the integer LayerNorm kernels (I-ViT, I-BERT, FQ-ViT).

The normalized integers ``y ≈ (x - μ)/σ · 2^30/√C`` (base scale ``√C/2^30``) take the float affine
``w·n + b`` as a per-channel output scale, as the published I-ViT/I-BERT code does, keeping the
weights in float: ``scale_c = base·|w_c|`` (``base`` where ``w_c = 0``) and
``out_c = sign(w_c)·y_c + round(b_c / scale_c)``, so ``out_c·scale_c ≈ w_c·n_c + b_c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import Arith
from vitquant.kernels.base import PreparedKernel, Scale

LN_OUT_SHIFT = 30  # base scale √C / 2^30
MAX_BIAS = 2**51  # |round(bias/scale_c)|, leaves room for |y| <= 2^30


def affine_constants(weight: torch.Tensor, bias: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, Scale]:
    """``(sign(w_c), round(bias_c/scale_c), scale_c)`` (float64 [C]) of :func:`fold_affine`, ``scale_c =
    base·|w_c|`` (``base = √C/2^30`` where ``w_c = 0``); ConfigError where ``|round(bias/scale)| > 2^51``."""
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
    if bias_int.numel() and bias_int.abs().max().item() > MAX_BIAS:
        raise ConfigError("LayerNorm bias too large for its weight: |bias/(√C/2^30·|w|)| exceeds 2^51")
    return torch.sign(w), bias_int, out_scale


def fold_affine(
    y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, arith: Arith
) -> tuple[torch.Tensor, Scale]:
    """Fold ``weight``/``bias`` [C] into the output of :func:`normalize` (base scale ``√C/2^30``).

    ``scale_c = base·|w_c|`` (``base`` where ``w_c = 0``), ``out = sign(w_c)·y + round(bias_c/scale_c)``;
    so ``out·scale_c ≈ w_c·y·base + bias_c``. ``|round(bias/scale)| <= 2^51`` (else ConfigError), so
    ``|out| <= 2^30 + 2^51``.
    """
    sign, bias_int, out_scale = affine_constants(weight, bias, y.shape[-1])
    return y * arith.tensor(sign) + arith.tensor(bias_int), out_scale


def prepared_layernorm(
    name: str, arith: Arith, weight: torch.Tensor, bias: torch.Tensor, channels: int,
    check_rows: Callable[[tuple[int, ...]], None], norm: Callable[[torch.Tensor], torch.Tensor], input_limit: int,
) -> PreparedKernel:
    """A LayerNorm kernel prepared for ``channels`` channels: ``norm`` (integers onto ``|y| <= 2^30`` at
    the base scale ``√C/2^30``), then the affine folded as in :func:`fold_affine`; ``check_rows`` is the
    family's shape check, run on the channels first."""
    check_rows((channels,))
    sign, bias_int, out_scale = affine_constants(weight, bias, channels)
    sign_t, bias_t = arith.tensor(sign), arith.tensor(bias_int)

    def check_shape(shape: tuple[int, ...]) -> None:
        check_rows(shape)
        if shape[-1] != channels:
            raise ConfigError(f"{name}: prepared for {channels} channels, got shape {shape}")

    bound = 2**LN_OUT_SHIFT + (int(bias_int.abs().max()) if channels else 0)
    return PreparedKernel(name, lambda x: norm(x) * sign_t + bias_t, out_scale, bound, input_limit, check_shape)
