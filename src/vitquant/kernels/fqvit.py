"""FQ-ViT integer kernels (Lin et al., "FQ-ViT: Post-Training Quantization for Fully Quantized Vision
Transformer", IJCAI 2022): Log-Int-Softmax, the Power-of-Two-Factor (PTF) LayerNorm and the PTF fit.

- :class:`LogIntSoftmax`: I-BERT's i-exp (:mod:`.ibert`), then the log2 quantization of the
  probabilities ``q = log_round(round(Σe / e))`` where ``log_round(R) = ⌊log2 R⌋ + 1`` if the bit below
  the leading one of ``R`` is set (else ``⌊log2 R⌋``); codes ``q >= 2^b`` mean probability 0, the rest
  are clamped to ``0..2^b - 1`` (``b = out_bits``, default 4 as FQ-ViT's attention). Output
  ``y = 2^(2^b - 1 - q)`` with scale ``2^-(2^b - 1)``, so ``y·scale = 2^-q`` (``y <= 2^15``).
  ``b <= 4``: 5-bit codes reach ``2^-31``, below the published clamp of i-exp at ``2^-30`` (``n = 30``)
  and the resolution of a 34-bit ``exp`` (on peaky rows most 5-bit codes would miss the float ones), and
  ``b = 6`` would need ``y = 2^63``. :meth:`LogIntSoftmax.log_codes` returns ``q`` itself for an
  integer ``attn @ v`` by shifts.
- :class:`PTFLayerNorm`: inputs ``x_int`` with per-channel scales ``s·2^α_c`` (``α_c ∈ 0..3``, K = 3);
  ``x_int << α_c`` is on the common scale ``s``; then the integer LayerNorm of :mod:`.ibert`
  (integer mean, variance, Newton ``isqrt``, ``⌊2^46/std⌋``, base scale ``√C/2^30``) and the affine
  folded into a per-channel output scale (:func:`~vitquant.kernels.affine.fold_affine`).
- :func:`fit_ptf`: FQ-ViT's PTF observer; :func:`ptf_integers` forms the kernel's integer input.

Differences from the published code (megvii-research/FQ-ViT, ``models/ptq/layers.py``,
``models/ptq/observer/ptf.py``):

- Log-Int-Softmax: the published ``int_exp`` keeps ``exp`` at scale ``a·S²/2^30`` in float; we keep it
  as an integer with ``exp(0) ∈ [2^33, 2^34)`` (a constant shift, so ``Σe < 2^50`` for 65536-element
  rows) and run i-exp on the fine internal scale of :mod:`.ibert`. ``round(Σe/e)`` rounds half up
  (published ``torch.round``: half to even) by an integer division; ``log_round`` is integer
  comparisons against ``3·2^(j-2)`` (``q >= j`` iff ``R >= 3·2^(j-2)``) instead of float ``log2``;
  ``e = 0`` (published: ``Σe/0 = inf``, masked) gives probability 0 explicitly;
- PTF LayerNorm: the published kernel computes ``std`` in float from ``C·Σx² - (Σx)²`` and requantizes
  straight to the next quantizer's scale with an 8-bit dyadic ``M/2^N`` per channel; we use the integer
  statistics of I-BERT's kernel (rounded mean, ``isqrt``) and keep our output contract (scale
  ``√C/2^30·|w_c|``), leaving requantization to the consumer. ``eps`` is ignored (integer std).
- :func:`fit_ptf` follows the observer (one min/max range over all channels for the largest factor
  ``2^K``, zero point from that range and shared by all factors, per-channel factor by the smallest
  MSE, the first on ties); the published activations are unsigned (``uint8``: asymmetric with a
  zero point); ``symmetric=True`` is our signed variant without zero point.

Accepted inputs (else :class:`~vitquant.errors.ConfigError`): integers ``|x| < 2^16``, softmax scales
``2^-20..2^10`` and rows of ``1..2^16``, LayerNorm rows of ``1..4096`` channels.
"""

from __future__ import annotations

import torch

from vitquant.errors import ConfigError, NumericalError
from vitquant.kernels.arith import Arith
from vitquant.kernels.affine import prepared_layernorm
from vitquant.kernels.base import LayerNormKernel, PreparedKernel, Scale, SoftmaxKernel, reduce_logits, register_kernel, rows_within
from vitquant.kernels.ibert import (
    MAX_CHANNELS,
    MAX_INPUT,
    MAX_ROW,
    ExpConstants,
    check_input,
    exp_constants,
    normalize,
    scalar_scale,
    softmax_exp,
)

LIS_EXP_BITS = 34  # exp(0) in [2^33, 2^34)
MAX_LIS_BITS = 4  # codes down to 2^-15 (i-exp clamps at 2^-30), y <= 2^15
PTF_K = 3  # factors 2^0 .. 2^3
FIT_EPS = float(torch.finfo(torch.float32).eps)  # the observer's lower bound on the step


# --------------------------------------------------------------------------- Log-Int-Softmax


@register_kernel
class LogIntSoftmax(SoftmaxKernel):
    """Log-Int-Softmax: ``y·2^-(2^b-1) = 2^-q``, ``q = log_round(round(Σe/e))`` (0 where ``q >= 2^b``).

    Bounds: ``e < 2^34``, ``Σe < 2^50``, ``2Σe + e < 2^52``; ``R = round(Σe/e) >= 1``; ``y <= 2^15``.
    """

    family = "fqvit"

    def __init__(self, out_bits: int = 4) -> None:
        super().__init__(out_bits)
        if out_bits > MAX_LIS_BITS:
            raise ConfigError(f"{self.name}: log2 codes of at most {MAX_LIS_BITS} bits, got {out_bits}")

    @property
    def levels(self) -> int:
        return 2**self.out_bits

    def log_codes(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, keep)``: codes ``q ∈ [0, 2^b - 1]`` (arith dtype) and a bool mask, False where the
        probability is 0 (``log_round >= 2^b`` or ``e = 0``); the probability is ``keep · 2^-q``."""
        delta, reduced = reduce_logits(x, scalar_scale(scale, self.name), arith)
        check_input(delta, self.name, MAX_ROW)
        return self._log_codes(delta, exp_constants(scalar_scale(reduced, self.name), LIS_EXP_BITS), arith)

    def _log_codes(self, x: torch.Tensor, const: ExpConstants, arith: Arith) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes of reduced integers: ``q`` = the number of thresholds ``2, 3, 6, 12, …, 3·2^(2^b-2)`` that
        ``R = round(Σe/e)`` reaches (``q >= j`` iff ``R >= 3·2^(j-2)``): one bucketize, or (compiled) a sum
        of comparisons that inductor fuses into one loop, 2.5x faster than its binary searches."""
        e, total = softmax_exp(x, const, arith)
        safe = torch.clamp(e, min=1)
        ratio = arith.floor_div(2 * total + safe, 2 * safe)  # round(Σe/e), half up
        thresholds = [2] + [3 * 2 ** (j - 2) for j in range(2, self.levels + 1)]
        if torch.compiler.is_compiling():  # the comparisons fuse into one loop
            q = sum((ratio >= t).to(arith.dtype) for t in thresholds)
        else:  # one pass instead of 2^b
            q = torch.bucketize(ratio, arith.tensor(torch.tensor(thresholds)), right=True).to(arith.dtype)
        keep = (q < self.levels) & (e > 0)
        return torch.clamp(q, max=self.levels - 1), keep

    def prepare_reduced(self, scale: Scale, arith: Arith) -> PreparedKernel:
        const = exp_constants(scalar_scale(scale, self.name), LIS_EXP_BITS)
        top = self.levels - 1

        def apply(x: torch.Tensor) -> torch.Tensor:
            q, keep = self._log_codes(x, const, arith)
            y = arith.shift_left(torch.ones_like(q), top - q)
            return torch.where(keep, y, torch.zeros_like(y))

        return PreparedKernel(self.name, apply, torch.tensor(2.0**-top, dtype=torch.float64), 2**top, MAX_INPUT,
                              rows_within(self.name, MAX_ROW))


# --------------------------------------------------------------------------- PTF LayerNorm


def ptf_exponents(scale: Scale, channels: int) -> torch.Tensor:
    """``α_c`` (int64 [C]) with ``scale_c = min(scale)·2^α_c`` exactly, ``α_c ∈ 0..K`` (else ConfigError).

    One scale for all channels is accepted (all ``α = 0``).
    """
    s = torch.as_tensor(scale).detach().to(torch.float64).reshape(-1)
    if s.numel() == 1:
        s = s.expand(channels)
    if s.numel() != channels:
        raise ConfigError(f"PTF LayerNorm: needs {channels} channel scales, got {s.numel()}")
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise ConfigError("PTF LayerNorm: channel scales must be finite and > 0")
    ratio = s / s.min()
    alpha = torch.round(torch.log2(ratio))
    if alpha.max().item() > PTF_K or not torch.equal(ratio, torch.exp2(alpha)):
        raise ConfigError(
            f"PTF LayerNorm: channel scales must be s·2^α with integer α in 0..{PTF_K} (power-of-two factors)"
        )
    return alpha.to(torch.int64)


@register_kernel
class PTFLayerNorm(LayerNormKernel):
    """FQ-ViT integer LayerNorm on PTF inputs: ``x_int·2^α_c`` (``|.| < 2^19``), then integer statistics.

    Bounds (:func:`~vitquant.kernels.ibert.normalize` with ``M < 2^19``, ``C <= 4096``): ``Σdev² < 2^50``,
    ``std < 2^25``, ``|y| <= 2^30``.
    """

    family = "fqvit"
    input_format = "ptf"

    def prepare(
        self, scale: Scale, arith: Arith, weight: torch.Tensor, bias: torch.Tensor, channels: int
    ) -> PreparedKernel:
        check_rows = rows_within(self.name, MAX_CHANNELS)
        check_rows((channels,))
        factor = arith.tensor(torch.exp2(ptf_exponents(scale, channels).to(torch.float64)))
        return prepared_layernorm(self.name, arith, weight, bias, channels, check_rows,
                                  lambda x: normalize(x * factor, arith), MAX_INPUT)


# --------------------------------------------------------------------------- PTF fit


def _code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def fit_ptf(
    x: torch.Tensor, bits: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FQ-ViT's PTF observer on activations ``x`` [..., C]: ``(scale [C] = s·2^α_c, zero_point [C] or None)``.

    ``s·2^K = (max - min)/(2^b - 1)`` over all channels (asymmetric; ``z = clamp(-round(min/(s·2^K)), 0,
    2^b - 1)``, one value for all channels) or ``max|x|/(2^(b-1) - 1)`` (``symmetric``; no zero point);
    ``α_c ∈ 0..K`` minimises the channel's mean squared quantization error (all in float64; the step
    is at least float32's eps, as published). The kernel input is then ``x_int = code - z`` with scale
    ``scale_c`` (:func:`ptf_integers`).
    """
    if not 2 <= bits <= 16:
        raise ConfigError(f"PTF fit: bits must be within 2..16, got {bits}")
    if x.dim() == 0 or x.numel() == 0:
        raise ConfigError(f"PTF fit: needs a non-empty [..., C] tensor, got shape {tuple(x.shape)}")
    rows = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    if not torch.isfinite(rows).all():
        raise NumericalError("PTF fit: activations contain NaN or inf")
    qmin, qmax = _code_range(bits, symmetric)
    lo, hi = rows.min(), rows.max()
    if symmetric:
        top = torch.clamp(torch.maximum(lo.abs(), hi.abs()) / qmax, min=FIT_EPS)
        zero = torch.zeros((), dtype=torch.float64)
    else:
        top = torch.clamp((hi - lo) / (qmax - qmin), min=FIT_EPS)
        zero = torch.clamp(qmin - torch.round(lo / top), qmin, qmax)
    step = top / 2**PTF_K
    errors = []
    for alpha in range(PTF_K + 1):  # the 4 candidate factors
        s = step * 2**alpha
        codes = torch.clamp(torch.round(rows / s) + zero, qmin, qmax)
        errors.append(((codes - zero) * s - rows).square().mean(dim=0))
    best = torch.stack(errors).argmin(dim=0)  # first minimum on ties (smallest factor), as published
    scale = step * torch.exp2(best.to(torch.float64))
    return scale, None if symmetric else zero.expand_as(scale).clone()


def ptf_integers(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Kernel input ``x_int = clamp(round(x/scale_c) + z, code range) - z`` (float64, ``|x_int| < 2^16``).

    Unsigned codes ``0..2^b - 1`` with a zero point, signed codes without one (``zero_point=None``).
    """
    qmin, qmax = _code_range(bits, zero_point is None)
    zero = 0.0 if zero_point is None else torch.as_tensor(zero_point, dtype=torch.float64)
    steps = torch.round(x.to(torch.float64) / torch.as_tensor(scale, dtype=torch.float64))
    return torch.clamp(steps + zero, qmin, qmax) - zero
