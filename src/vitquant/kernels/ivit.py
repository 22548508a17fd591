"""I-ViT integer kernels: Shiftmax, ShiftGELU and I-LayerNorm (Li & Gu, "I-ViT: Integer-only
Quantization for Efficient Vision Transformer Inference", ICCV 2023).

**ShiftExp** (Alg. 1), for integers ``Δ <= 0`` with scale S:

    Iₚ = Δ + (Δ >> 1) - (Δ >> 4)                     (Δ · log₂e, log₂e ≈ 1.0111b = 1.4375)
    I₀ = ⌊1/S⌋;   a = -Iₚ = q · I₀ + ρ,  0 <= ρ < I₀   (integer part q, remainder ρ)
    2^(-ρ/I₀) ≈ 1 - ρ/(2I₀)                          (linear, Eq. 15)
    E = ⌊(2I₀ - ρ) · 2^(N-1-q)⌋  ≈  I₀ · 2^N · e^(S·Δ)

**Shiftmax**: ``Δ = x - max(x)``, ``E = ShiftExp(Δ)``, ``y = ⌊E · 2^(k-1) / ΣE⌋`` with scale
``1/2^(k-1)`` (k = ``out_bits``, N = 15 as in the published code).

**ShiftGELU** (Alg. 2): ``GELU(x) ≈ x · σ(1.702x)``, with ``z = x + (x>>1) + (x>>3) + (x>>4)``
(1.702 ≈ 1.1011b = 1.6875) and ``σ(z) = e^(z-m) / (e^(z-m) + e^(-m))`` from two ShiftExp calls
(N = 23 as published); ``σ_int = ⌊E₁ · 2^(k-1) / (E₁ + E₂)⌋``; output ``x · σ_int`` with scale
``S / 2^(k-1)``.

**I-LayerNorm**: ``μ = round(Σx / C)``, ``d = x - μ``, ``v = Σd²``, ``σ = ⌊√v⌋`` (:func:`isqrt`,
Newton with shifts), ``f = ⌊(2³¹-1)/σ⌋``, ``y = ⌊d · f / 2⌋`` with base scale ``√C / 2³⁰``. The
affine is folded as in the published code: per-channel scale ``base · |w_c|`` and integers
``sign(w_c) · y + round(b_c / (base · |w_c|))``; a channel with ``w_c = 0`` gets scale ``base`` and
integers ``round(b_c / base)``. LayerNorm's ``eps`` is ignored: the std is computed from integers
(``σ`` is clamped at 1, so a constant row gives ``y = 0``).

Where we differ from the published code (github.com/zkkli/I-ViT, ``quant_modules.py``), on purpose:

- 2^(-ρ/I₀): the exact variant of the PyTorch code (the half of ``ρ`` is kept until after the shift:
  ``(2I₀ - ρ) << (N-1-q)``), not the paper's ``((-ρ) >> 1) + I₀`` which floors it first;
  ``I₀ = ⌊1/S⌋`` as in the paper (the code uses ``⌈1/S⌉``);
- for ``q >= N`` we keep shifting right (``E`` decays to 0) instead of clamping ``Iₚ`` at ``-N·I₀``,
  which gives every far-away logit a floor weight of 2^-N;
- inputs with S > 1 (where ⌊1/S⌋ = 0) are first shifted left by the smallest p with 2^p >= S
  (``Δ << p`` with scale S/2^p, ``I₀ = ⌊2^p/S⌋``); for S <= 1, p = 0 and nothing changes;
- IntDiv divides directly, ``⌊E · 2^(k-1) / ΣE⌋`` (an exact integer division per element), where the
  code multiplies by a 31-bit reciprocal ``⌊(2³¹-1)/ΣE⌋`` and clamps the sum at 2³¹-1 (which loses
  up to ΣE/2³¹ in relative precision);
- ShiftGELU computes 1.702·x with shifts on the integers, as the paper's Algorithm 2 and our issue
  ask, whereas the published code folds 1.702 into the float scale (``I₀ = ⌊-1/(1.702 S)⌋``): the
  shift form needs no second constant per scale and is the integer-only reading of the algorithm
  (1.6875 instead of 1.702: 0.9 % on the sigmoid's slope, within the sigmoid approximation's error);
- ShiftGELU takes ``m = max(z, 0)`` per element rather than the row maximum: both exponents are then
  <= 0 and one of them is e⁰, so the denominator is at least ``I₀ · 2^N`` and never 0 (with a row
  maximum, large maxima saturate both exponents and σ degenerates to 0/0, or to 1/2 with the
  published clamp; all-negative rows would shift left beyond N).
- I-LayerNorm rounds the mean half up, uses the exact ⌊√v⌋ (the code runs 10 Newton steps from 2¹⁶,
  not converged for v below ~2^10 or above ~2^40), and rounds the folded bias half to even (the code floors it).

Ranges (|x| < 2^16 = :data:`INPUT_LIMIT`, p <= 4 for S <= 10, ``I₀ <= 10⁴ < 2^14`` for S >= 1e-4):
``|Δ << p| < 2^(17+p)``; ``a < 1.44 · 2^(17+p) + 1``; ``E <= I₀ · 2^N``; Shiftmax
``ΣE <= L · I₀ · 2^N`` (< 2^39 for L = 1024, N = 15) and ``E · 2^(k-1) <= I₀ · 2^(N+k-1)`` (< 2^44); ShiftGELU
``E · 2^(k-1) <= I₀ · 2^(N+k-1)`` (< 2^52 for N = 23, k = 16, I₀ < 2^14) and ``|x · σ_int| < 2^31``.
These bounds are checked per call from the scale, and a scale that would break them raises
:class:`~vitquant.errors.ConfigError`. I-LayerNorm: ``|Σx| < C · 2^16``, ``|d| < 2^17``,
``v < C · 2^34`` (2^46 for C = 4096; C < 2^18 is required), ``|d| <= ⌊√v⌋`` so ``|d · f| < 2^31``,
``|y| <= 2^30``, and ``|round(b_c/scale_c)| + 2^30 < 2^52`` (checked).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import EXACT_LIMIT, Arith
from vitquant.kernels.base import GeluKernel, LayerNormKernel, PreparedKernel, SoftmaxKernel, register_kernel
from vitquant.kernels.affine import prepared_layernorm
from vitquant.kernels.isqrt import isqrt

#: the kernels accept integers with |x| < INPUT_LIMIT (bounds above are derived from it)
INPUT_LIMIT = 2**16
_LOG2E_BOUND = 1.4375  # |Iₚ| <= 1.4375 |Δ| + 1
_MAX_EXTRA_SHIFT = 60  # q beyond N + 60 gives E = 0 anyway (2I₀ < 2^52)


def _scalar_scale(scale: torch.Tensor | float, who: str) -> float:
    """The positive finite scalar value of ``scale`` (a 0-dim or one-element tensor)."""
    t = torch.as_tensor(scale, dtype=torch.float64)
    if t.numel() != 1:
        raise ConfigError(f"{who}: needs one input scale (uniform format), got shape {tuple(t.shape)}")
    s = float(t.reshape(()).item())
    if not math.isfinite(s) or s <= 0:
        raise ConfigError(f"{who}: input scale must be finite and positive, got {s}")
    return s


def exp_constants(s: float, n: int, terms: int, who: str) -> tuple[int, int]:
    """(p, I₀): pre-shift p (smallest p >= 0 with 2^p >= S) and ``I₀ = ⌊2^p / S⌋ >= 1``.

    Raises :class:`ConfigError` when ``I₀ · 2^n · terms`` (the largest sum or scaled numerator built
    from ShiftExp outputs) or the shifted exponent input would reach 2^52.
    """
    p = 0
    while 2.0**p < s:
        p += 1
    if _LOG2E_BOUND * 2 ** (17 + p) + 1 >= EXACT_LIMIT:
        raise ConfigError(f"{who}: input scale {s:g} too large for exact integer arithmetic (2^{p} pre-shift)")
    i0 = math.floor(2.0**p / s)
    if i0 * 2**n * terms >= EXACT_LIMIT:
        raise ConfigError(
            f"{who}: input scale {s:g} too small for exact integer arithmetic "
            f"(floor(1/S) * 2^{n} * {terms} reaches 2^52)"
        )
    return p, i0


def log2e_mul(x: torch.Tensor, arith: Arith) -> torch.Tensor:
    """x · log₂e ≈ x + (x >> 1) - (x >> 4)."""
    return x + arith.shift_right(x, 1) - arith.shift_right(x, 4)


def gelu_slope_mul(x: torch.Tensor, arith: Arith) -> torch.Tensor:
    """1.702 · x ≈ x + (x >> 1) + (x >> 3) + (x >> 4)."""
    return x + arith.shift_right(x, 1) + arith.shift_right(x, 3) + arith.shift_right(x, 4)


def shift_exp(delta: torch.Tensor, i0: int, n: int, arith: Arith) -> torch.Tensor:
    """ShiftExp of integers ``delta <= 0``: ``⌊(2I₀ - ρ) · 2^(n-1-q)⌋ ≈ I₀ · 2^n · e^(delta/I₀)``.

    ``q, ρ`` are the quotient and remainder of ``-(delta · log₂e) / I₀``; results lie in ``[0, I₀ · 2^n]``.
    """
    a = -log2e_mul(delta, arith)  # >= 0
    q = arith.floor_div(a, i0)
    rho = a - q * i0  # 0 <= ρ < I₀
    q = torch.clamp(q, max=n + _MAX_EXTRA_SHIFT)
    mantissa = 2 * i0 - rho  # (I₀, 2I₀]: 2I₀ · 2^(-ρ/I₀), linearised
    left = torch.clamp(n - 1 - q, min=0)
    right = torch.clamp(q - (n - 1), min=0)
    return arith.shift_right(arith.shift_left(mantissa, left), right)


def int_div(num: torch.Tensor, den: torch.Tensor, out_bits: int, arith: Arith) -> torch.Tensor:
    """IntDiv: ``⌊num · 2^(out_bits-1) / den⌋`` (den >= 1), a fraction num/den on ``out_bits`` bits."""
    return arith.floor_div(arith.shift_left(num, out_bits - 1), den)


@register_kernel
class Shiftmax(SoftmaxKernel):
    """I-ViT Shiftmax: ShiftExp of ``x - max(x)``, then IntDiv by the row sum (scale 1/2^(k-1))."""

    family = "ivit"
    N: ClassVar[int] = 15

    def prepare_reduced(self, scale: torch.Tensor, arith: Arith) -> PreparedKernel:
        s = _scalar_scale(scale, self.name)
        p, i0 = exp_constants(s, self.N, 2 ** (self.out_bits - 1), self.name)

        def check_shape(shape: tuple[int, ...]) -> None:  # rows of L: L · I₀ · 2^N < 2^52
            exp_constants(s, self.N, max(shape[-1] if shape else 1, 2 ** (self.out_bits - 1)), self.name)

        def apply(x: torch.Tensor) -> torch.Tensor:
            delta = arith.shift_left(x - torch.amax(x, dim=-1, keepdim=True), p)  # <= 0, |Δ| < 2^(17+p)
            e = shift_exp(delta, i0, self.N, arith)  # [0, I₀ · 2^N]
            total = torch.sum(e, dim=-1, keepdim=True)  # [I₀ · 2^N, L · I₀ · 2^N]
            return int_div(e, total, self.out_bits, arith)  # [0, 2^(k-1)]

        return PreparedKernel(self.name, apply, torch.tensor(2.0 ** (1 - self.out_bits), dtype=torch.float64),
                              2 ** (self.out_bits - 1), INPUT_LIMIT, check_shape)


@register_kernel
class ShiftGELU(GeluKernel):
    """I-ViT ShiftGELU: ``x · σ(1.702x)`` with σ from two ShiftExp calls and IntDiv (scale S/2^(k-1))."""

    family = "ivit"
    N: ClassVar[int] = 23

    def prepare(self, scale: torch.Tensor, arith: Arith) -> PreparedKernel:
        s = _scalar_scale(scale, self.name)
        p, i0 = exp_constants(s, self.N, max(2, 2 ** (self.out_bits - 1)), self.name)

        def apply(x: torch.Tensor) -> torch.Tensor:
            z = gelu_slope_mul(arith.shift_left(x, p), arith)  # ≈ 1.702 x 2^p, |z| < 1.69 · 2^(16+p)
            m = torch.clamp(z, min=0)
            e_num = shift_exp(z - m, i0, self.N, arith)  # e^(z-m), <= I₀ · 2^N
            e_ref = shift_exp(-m, i0, self.N, arith)  # e^(-m); one of the two is e⁰ = I₀ · 2^N
            sigmoid = int_div(e_num, e_num + e_ref, self.out_bits, arith)  # [0, 2^(k-1)]
            return x * sigmoid  # |y| < 2^(16+k-1) <= 2^31

        return PreparedKernel(self.name, apply, torch.tensor(s * 2.0 ** (1 - self.out_bits), dtype=torch.float64),
                              INPUT_LIMIT * 2 ** (self.out_bits - 1), INPUT_LIMIT)


@register_kernel
class ILayerNorm(LayerNormKernel):
    """I-ViT I-LayerNorm: integer mean and std (isqrt), ``⌊d · ⌊(2³¹-1)/σ⌋ / 2⌋``, affine folded."""

    family = "ivit"
    FACTOR: ClassVar[int] = 2**31 - 1
    MAX_CHANNELS: ClassVar[int] = 2**18 - 1  # v < C · 2^34 < 2^52

    def prepare(
        self, scale: torch.Tensor, arith: Arith, weight: torch.Tensor, bias: torch.Tensor, channels: int
    ) -> PreparedKernel:
        _scalar_scale(scale, self.name)  # the input scale cancels out; it must still be one scale

        def check_rows(shape: tuple[int, ...]) -> None:
            if not shape or not 1 <= shape[-1] <= self.MAX_CHANNELS:
                raise ConfigError(f"{self.name}: supports 1..{self.MAX_CHANNELS} channels, got {shape[-1] if shape else 0}")

        def normalize(x: torch.Tensor) -> torch.Tensor:
            channels = x.shape[-1]
            total = torch.sum(x, dim=-1, keepdim=True)  # |Σx| < C · 2^16
            mean = arith.floor_div(2 * total + channels, 2 * channels)  # round half up
            dev = x - mean  # |d| < 2^17
            var = torch.sum(dev * dev, dim=-1, keepdim=True)  # < C · 2^34
            std = torch.clamp(isqrt(var, arith), min=1)  # |d| <= ⌊√v⌋ (or d = 0)
            factor = arith.floor_div(arith.tensor(self.FACTOR), std)  # <= 2^31 - 1
            return arith.shift_right(dev * factor, 1)  # |d · f| <= 2^31 - 1, |y| <= 2^30

        return prepared_layernorm(self.name, arith, weight, bias, channels, check_rows, normalize, INPUT_LIMIT)
