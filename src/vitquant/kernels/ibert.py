"""I-BERT integer kernels (Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021).

- i-exp (:func:`int_exp`): ``exp(x) = 2^-q · exp(r)`` with ``x = q·(-ln 2) + r``, ``r ∈ (-ln 2, 0]``,
  and ``exp(r) ≈ a·r² + b·r + c``. The paper prints ``0.3585·(r + 1.353)² + 0.344``; we use the
  refined coefficients of the published code, ``a, b, c = 0.35815147, 0.96963238, 1.0`` in the form
  ``a·(r·(r + b/a) + c/a)`` (integers ``⌊b/(a·S)⌋`` and ``⌊c/(a·S²)⌋``), ``x0 = -0.6931`` and the
  input clamped at ``30·x0_int`` (``n = 30``), as published.
- :class:`IntSoftmax`: ``e = i-exp(x - max x)`` requantized to 16 bits,
  ``y = ⌊e · ⌊2^40 / Σe⌋ / 2^(40-b)⌋`` with output scale ``2^-b`` (``b = out_bits``, default 8);
  ``0 <= y <= 2^b`` (as published, ``2^b`` is only reachable by a one-hot row; those give ``2^b - 1``
  unless ``Σe`` divides ``2^40``), each row sums to at most ``2^b``.
- :class:`IntGELU`: ``x·½(1 + erf(x/√2))`` with ``erf(u) ≈ sign(u)·[a·(min(|u|, -b) + b)² + 1]``,
  ``a = -0.2888``, ``b = -1.769``; the erf integer is floored by ``2^14`` and ``1`` is added as
  ``⌊1/S_erf⌋``, as published.
- :class:`IntLayerNorm`: integer mean, variance, ``std = isqrt(var)`` (Newton, :mod:`.isqrt`),
  ``y = ⌊dev · ⌊2^31 / std⌋ / 2⌋`` (with 15 more factor bits, :func:`normalize`) on the base scale
  ``√C / 2^30``, then the float affine folded into a per-channel output scale (:func:`fold_affine`).
  LayerNorm's ``eps`` is ignored: the std comes from integers (``std = 0`` only for constant rows,
  whose deviations are 0).

Deliberate differences from the published code (kssteven418/I-BERT,
``fairseq/quantization/utils/quant_modules.py``), all integer-only:

- fine internal scale: the published constants ``⌊x0/S⌋``, ``⌊b/S⌋``, ``⌊c/S²⌋`` are only accurate
  for the tiny scales of a 32-bit accumulator (at ``S = 0.1`` the i-exp range reduction collapses to
  ``x0_int = -7`` and the ``2^14`` erf floor leaves no bits). We run i-exp and i-erf on ``x·2^k`` at the
  scale ``S' = S/2^k <= 2^-14`` (``k = 0`` for ``S <= 2^-14``): the same algorithm on a finer grid,
  entered by an exact left shift;
- the 16-bit requantization of ``exp`` before the sum (published: ``QuantAct(16)``, a running-max float
  scale and rounding) is a right shift by a constant: ``e = ⌊z · 2^(G-q)⌋`` with ``G`` chosen so that
  ``exp(0)`` lands in ``[2^15, 2^16)``;
- the softmax division uses ``2^40`` instead of ``2^32`` (52 bits allow it; the floor of the factor
  then costs under ``2^-8`` of a step even for 16-bit outputs and 65536-element rows);
- LayerNorm: an integer square root instead of the float ``sqrt`` placeholder; no right shift of the
  deviations before squaring (the published int32 overflow guard; ``Σ dev²`` fits in 52 bits, see
  :func:`normalize`); ``⌊2^46/std⌋`` and a shift by 16 instead of ``⌊2^31/std⌋`` and a shift by 1
  (same output and scale, 15 more bits of precision); ``std = 0`` guarded by ``max(std, 1)`` instead of
  ``+ 1e-4``; the mean rounds half up (published ``torch.round``: half to even); the bias is
  ``round(bias_c/scale_c)`` on a positive per-channel scale ``√C/2^30·|w_c|`` with the sign of ``w_c``
  applied to the integers (published: ``⌊bias/w/S⌋`` on a signed scale ``√C/2^30·w``);
- GELU: the published output scale ``S·S_erf/2`` is negative (``a < 0``); we negate the output
  integers instead, so the scale is positive. ``√2`` is exact (published: ``1.4142``).

Accepted inputs (else :class:`~vitquant.errors.ConfigError`): integers ``|x| < 2^16``, scalar scales
``2^-20 <= S <= 2^10`` (softmax, GELU), softmax rows of ``1..2^16`` elements, LayerNorm rows of
``1..4096`` channels. Every intermediate stays below ``2^52`` (bounds per step in the docstrings
below; the tests check the extremes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import Arith
from vitquant.kernels.base import GeluKernel, LayerNormKernel, PreparedKernel, Scale, SoftmaxKernel, register_kernel, rows_within
from vitquant.kernels.affine import LN_OUT_SHIFT, fold_affine, prepared_layernorm
from vitquant.kernels.isqrt import isqrt

# i-exp (published constants)
EXP_X0 = -0.6931  # -ln 2
EXP_N = 30  # input clamped at EXP_N · x0_int, so q <= 30
EXP_COEF = (0.35815147, 0.96963238, 1.0)  # exp(r) ≈ a r² + b r + c on (-ln 2, 0]
# i-erf (published constants)
ERF_A, ERF_B = -0.2888, -1.769
ERF_SHIFT = 14  # erf integer floored by 2^14
# integer ranges
FINE_SCALE_LOG2 = -14  # i-exp / i-erf run at a scale S' <= 2^-14
MIN_SCALE, MAX_SCALE = 2.0**-20, 2.0**10
MAX_INPUT = 2**16  # |x| < 2^16
MAX_ROW = 2**16  # softmax row length
MAX_CHANNELS = 4096  # LayerNorm channels
SOFTMAX_EXP_BITS = 16  # I-BERT's 16-bit exp before the sum
SOFTMAX_DIV_BITS = 40  # ⌊2^40 / Σe⌋
LN_FACTOR_BITS = 46  # ⌊2^46 / std⌋ (published: 2^31)


# --------------------------------------------------------------------------- input checks


def scalar_scale(scale: Scale, what: str) -> float:
    """The Python float of a one-element positive scale within ``[MIN_SCALE, MAX_SCALE]``."""
    s = torch.as_tensor(scale, dtype=torch.float64)
    if s.numel() != 1:
        raise ConfigError(f"{what}: needs one scale for the tensor, got shape {tuple(s.shape)}")
    v = float(s.reshape(()))
    if not math.isfinite(v) or not MIN_SCALE <= v <= MAX_SCALE:
        raise ConfigError(f"{what}: input scale must be within [2^-20, 2^10], got {v}")
    return v


def check_input(x: torch.Tensor, what: str, max_row: int | None = None) -> None:
    """Integers ``|x| < 2^16`` with a non-empty last dim (at most ``max_row`` long)."""
    rows_within(what, max_row)(tuple(x.shape))
    if x.numel() and x.abs().amax().item() >= MAX_INPUT:
        raise ConfigError(f"{what}: input integers must satisfy |x| < 2^16")


def fine_shift(scale: float) -> int:
    """Smallest ``k >= 0`` with ``scale / 2^k <= 2^FINE_SCALE_LOG2`` (exact, from the float's exponent)."""
    mantissa, exponent = math.frexp(scale)  # scale = mantissa · 2^exponent, mantissa in [0.5, 1)
    ceil_log2 = exponent - 1 if mantissa == 0.5 else exponent
    return max(0, ceil_log2 - FINE_SCALE_LOG2)


# --------------------------------------------------------------------------- i-exp


@dataclass(frozen=True)
class ExpConstants:
    """Integer constants of i-exp for one input scale ``S`` (computed in Python, float64).

    ``shift`` = k (input refined to ``S' = S/2^k``), ``x0 = ⌊-0.6931/S'⌋``, ``b = ⌊(b/a)/S'⌋``,
    ``c = ⌊(c/a)/S'²⌋``, ``gain`` = G (``e = ⌊z·2^(G-q)⌋``); ``out_scale = a·S'²/2^G`` is the scale
    of ``e``.
    """

    shift: int
    x0: int
    b: int
    c: int
    gain: int
    out_scale: float


def exp_constants(scale: float, exp_bits: int) -> ExpConstants:
    """i-exp constants for input scale ``scale`` with ``exp(0)`` mapped into ``[2^(exp_bits-1), 2^exp_bits)``.

    With ``S' <= 2^-14``: ``|x0| >= 11355``, ``c > 2^29``; with ``S' >= 2^-20``: ``|x0| < 2^20``,
    ``b < 2^22``, ``c < 2^42``.
    """
    k = fine_shift(scale)
    s = scale / 2**k  # exact (power of two)
    a, b, c = EXP_COEF
    c_int = math.floor(c / a / s**2)
    gain = exp_bits - c_int.bit_length()
    return ExpConstants(
        shift=k,
        x0=math.floor(EXP_X0 / s),
        b=math.floor(b / a / s),
        c=c_int,
        gain=gain,
        out_scale=a * s**2 / 2.0**gain,
    )


def int_exp(x: torch.Tensor, const: ExpConstants, arith: Arith) -> torch.Tensor:
    """i-exp of integers ``-2^17 < x <= 0``: ``e ≈ exp(x·S) / const.out_scale``, ``0 <= e < 2^exp_bits``.

    Bounds: ``x·2^k > -2^17·2^24 = -2^41`` before the clamp at ``30·x0`` (``> -2^25``); ``q ∈ [0, 30]``;
    ``r ∈ (x0, 0]``; ``z = r·(r + b) + c ∈ [0, c]`` (``r + b > 0`` as ``|x0| < b``) and ``c < 2^42``;
    ``z·2^G < 2^exp_bits`` for ``G > 0``, and right shifts by ``q - G <= 30 + 42 - exp_bits < 63``.
    """
    if const.shift:
        x = arith.shift_left(x, const.shift)
    x = torch.clamp(x, min=EXP_N * const.x0)
    q = arith.floor_div(x, const.x0)
    r = x - const.x0 * q
    z = torch.clamp(r * (r + const.b) + const.c, min=0)
    if const.gain >= 0:
        return arith.shift_right(arith.shift_left(z, const.gain), q)
    return arith.shift_right(z, q - const.gain)


def softmax_exp(x: torch.Tensor, const: ExpConstants, arith: Arith) -> tuple[torch.Tensor, torch.Tensor]:
    """``e = i-exp(x - max x)`` over the last dim and its row sum ``Σe`` (keepdim).

    ``x - max ∈ (-2^17, 0]``; the row maximum gets ``e = ⌊c·2^G⌋ >= 2^(exp_bits-1)``, so
    ``2^(exp_bits-1) <= Σe < N·2^exp_bits`` (``N <= 2^16``).
    """
    e = int_exp(x - x.amax(dim=-1, keepdim=True), const, arith)
    return e, e.sum(dim=-1, keepdim=True)


@register_kernel
class IntSoftmax(SoftmaxKernel):
    """I-BERT integer softmax: i-exp, 16-bit exp, ``y = ⌊e·⌊2^40/Σe⌋ / 2^(40-b)⌋``, scale ``2^-b``.

    Bounds: ``e < 2^16``, ``Σe < 2^32``, ``⌊2^40/Σe⌋ <= 2^25``, ``e·factor <= 2^40`` (``e <= Σe``).
    """

    family = "ibert"

    def prepare_reduced(self, scale: Scale, arith: Arith) -> PreparedKernel:
        const = exp_constants(scalar_scale(scale, self.name), SOFTMAX_EXP_BITS)
        shift = SOFTMAX_DIV_BITS - self.out_bits

        def apply(x: torch.Tensor) -> torch.Tensor:
            e, total = softmax_exp(x, const, arith)
            factor = arith.floor_div(arith.tensor(2**SOFTMAX_DIV_BITS), total)
            return arith.shift_right(e * factor, shift)

        return PreparedKernel(self.name, apply, torch.tensor(2.0**-self.out_bits, dtype=torch.float64),
                              2**self.out_bits, MAX_INPUT, rows_within(self.name, MAX_ROW))


# --------------------------------------------------------------------------- i-GELU


@register_kernel
class IntGELU(GeluKernel):
    """I-BERT integer GELU: ``y = -x·(erf_int + ⌊1/S_erf⌋)`` with scale ``S·|S_erf|/2``.

    With ``S' = S/2^k``, ``S_e = S'/√2``: ``erf_int = ⌊sign(x)·[(min(|x|·2^k, -b) + b)² + c] / 2^14⌋``
    with ``b = ⌊-1.769/S_e⌋``, ``c = ⌊(1/a)/S_e²⌋`` (negative) and ``S_erf = a·S_e²·2^14`` (negative as
    ``a < 0``). Bounds (``S' >= 2^-20``): ``|x|·2^k < 2^40`` before the clip, ``|b| < 2^22``,
    ``|c| < 2^43``, ``|erf_int| < 2^29``, ``|⌊1/S_erf⌋| < 2^29``, ``|y| < 2^16·2^30 = 2^46``.
    """

    family = "ibert"

    def prepare(self, scale: Scale, arith: Arith) -> PreparedKernel:
        s = scalar_scale(scale, self.name)
        k = fine_shift(s)
        s_erf_in = s / 2**k / math.sqrt(2.0)
        b_int = math.floor(ERF_B / s_erf_in)
        c_int = math.floor(1.0 / ERF_A / s_erf_in**2)
        s_erf = ERF_A * s_erf_in**2 * 2**ERF_SHIFT
        one_int = math.floor(1.0 / s_erf)

        def apply(x: torch.Tensor) -> torch.Tensor:
            clipped = torch.clamp(arith.shift_left(torch.abs(x), k), max=-b_int)
            poly = torch.sign(x) * ((clipped + b_int) * (clipped + b_int) + c_int)
            erf_int = arith.shift_right(poly, ERF_SHIFT)
            return -(x * (erf_int + one_int))

        return PreparedKernel(self.name, apply, torch.tensor(s * -s_erf / 2, dtype=torch.float64), 2**46, MAX_INPUT,
                              rows_within(self.name))


# --------------------------------------------------------------------------- integer LayerNorm


def normalize(x: torch.Tensor, arith: Arith) -> torch.Tensor:
    """``y = ⌊dev·⌊2^46/std⌋ / 2^16⌋`` over the last dim, ``y·√C/2^30 ≈ (x - mean)/σ``.

    I-BERT's ``⌊dev·⌊2^31/std⌋ / 2⌋`` with 15 more bits in the factor: same scale and range, but the
    factor's relative error ``std/2^31`` (up to 2^-6 for PTF-shifted 16-bit inputs, ``std < 2^25``)
    drops to ``std/2^46``. For ``|x| <= M`` over ``C`` channels: ``|Σx| <= C·M``; ``mean = round(Σx/C)``
    (half up), ``|dev| <= 2M``; ``Σdev² <= C·M² + C/4`` (a population variance is at most ``M²``);
    ``std = isqrt(Σdev²)`` so ``|dev| <= std`` and ``|dev·factor| <= 2^46``; ``|y| <= 2^30``. With
    ``M < 2^19`` (PTF-shifted inputs) and ``C <= 4096``: ``Σdev² < 2^50``, so no pre-shift of the
    deviations is needed.
    """
    channels = x.shape[-1]
    total = x.sum(dim=-1, keepdim=True)
    mean = arith.floor_div(2 * total + channels, 2 * channels)
    dev = x - mean
    var = (dev * dev).sum(dim=-1, keepdim=True)
    std = isqrt(var, arith)
    factor = arith.floor_div(arith.tensor(2**LN_FACTOR_BITS), torch.clamp(std, min=1))
    return arith.shift_right(dev * factor, LN_FACTOR_BITS - LN_OUT_SHIFT)


@register_kernel
class IntLayerNorm(LayerNormKernel):
    """I-BERT integer LayerNorm (:func:`normalize` + :func:`fold_affine`); ``eps`` is ignored."""

    family = "ibert"

    def prepare(
        self, scale: Scale, arith: Arith, weight: torch.Tensor, bias: torch.Tensor, channels: int
    ) -> PreparedKernel:
        s = torch.as_tensor(scale, dtype=torch.float64)
        if s.numel() != 1 or not math.isfinite(float(s.reshape(()))) or float(s.reshape(())) <= 0:
            raise ConfigError(f"{self.name}: needs one finite positive input scale, got {s}")
        return prepared_layernorm(self.name, arith, weight, bias, channels, rows_within(self.name, MAX_CHANNELS),
                                  lambda x: normalize(x, arith), MAX_INPUT)

