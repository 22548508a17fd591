"""Twin uniform quantizer (Yuan et al., "PTQ4ViT", ECCV 2022): two uniform ranges, one code bit picks one.

n = 2^(b-1); each range has a (b-1)-bit index. Two modes (a clean definition, not the published code's
sum of two clamped quantizers; see the research notes):

- ``softmax`` (input in [0, 1]): R2 step Δ2 = 1/n, R1 step Δ1 = Δ2 / 2^m (integer m >= 0, so aligning
  the ranges is a shift)::

      x̂ = clamp(round(x/Δ1), 0, n-1) · Δ1      if x < (n - 1/2) · Δ1      (R1)
      x̂ = clamp(round(x/Δ2), 1, n) · Δ2        otherwise                   (R2, top level 1)

  Codes label values: R1 index i -> i; R2 index j -> j·2^m when that is an R1 level (j·2^m <= n-1),
  else n + j - 1. When 2^m > 2n - 1, inputs in [(n - 1/2)Δ1, Δ2/2) round up to Δ2 (R2 has no 0).

- ``gelu``: negative step Δn = 0.16997.../n fixed (-min GELU, so -n·Δn = -0.16997... exactly),
  positive step Δp searched::

      x̂ = -clamp(round(-x/Δn), 0, n) · Δn       if x < 0
      x̂ = clamp(round(x/Δp), 0, n-1) · Δp       otherwise

  Codes: negative index i = 1..n -> i - 1, zero -> n, positive index p = 1..n-1 -> n + p.

Both emit at most 2^b distinct values per row (``max_levels = 2^b``). Zero is always +0.0.

Integer form (``to_integer``): softmax mode is x̂ = Δ2 · i · 2^(-m) (R1) or Δ2 · j (R2): mantissa the
range index, shift m in R1 and 0 in R2, scale Δ2 = 2^-(b-1); every product is exact. GELU mode has none:
its two steps Δn (fixed) and Δp (searched) have no power-of-two ratio, so no single scale with integer
mantissas and shifts gives both ranges (:class:`~vitquant.errors.NotIntegerError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.errors import ConfigError, NotIntegerError, NumericalError
from vitquant.quantizers.adalog import piecewise_sq_error, sort_rows
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.integer_view import IntegerView, reject_nan
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.state import register_quantizer

TWIN_MODES = ("softmax", "gelu")
GELU_MIN_ABS = 0.16997124254703522  # -min_x GELU(x)
SOFTMAX_M = tuple(range(20))  # searched m: Δ1 = Δ2 / 2^m, m = 0..19 (PTQ4ViT's 2^-i, i < 20)
M_MAX = 100  # Δ1 = 2^-(b-1+m) stays a normal float32
GELU_SCALES = 100
GELU_RANGE = (0.5, 1.2)  # Δp candidates: [0.5, 1.2] · max(x) / (n - 1)
SOFTMAX_MAX = 1.0 + 1e-6


def _half(bits: int) -> int:
    return 2 ** (check_bits(bits) - 1)


def gelu_negative_step(bits: int) -> float:
    """Δn = 0.16997.../n (float32 value as a Python float)."""
    return float(torch.tensor(GELU_MIN_ABS / _half(bits), dtype=torch.float32))


def _softmax_index(x: torch.Tensor, n: int, inv_d1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 index clamp(round(x/Δ1), 0, n-1) and R2 index clamp(round(x·n), 1, n) (x/Δ exact: Δ = 2^-k)."""
    i = torch.mul(x, inv_d1).round_().clamp_(0, n - 1)
    j = torch.mul(x, n).round_().clamp_(1, n)
    return i, j


# --------------------------------------------------------------------------- quantizers


def _checked(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 for :meth:`codes`; NaN is an error (a code must name a level)."""
    x = x.to(torch.float32)
    if torch.isnan(x).any():
        raise NumericalError("twin-uniform quantizer got NaN input")
    return x


@register_quantizer
class TwinSoftmaxQuantizer(Quantizer):
    """Twin uniform for post-softmax values with per-row integer ``m`` (Δ1 = 2^-(b-1+m), Δ2 = 2^-(b-1))."""

    kind: ClassVar[str] = "twin_softmax"
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"m": torch.int64}

    def __init__(self, bits: int, m: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        m = torch.as_tensor(m, dtype=torch.float32)
        if not torch.isfinite(m).all() or (m != m.round()).any() or (m < 0).any() or (m > M_MAX).any():
            raise ConfigError(f"twin-uniform m must be an integer in [0, {M_MAX}]")
        self.register_buffer("m", m.clone(memory_format=torch.contiguous_format))
        self.register_buffer("inv_step1", torch.exp2(m + (self.bits - 1)))
        self.register_buffer("pow_m", torch.exp2(m))
        self.register_buffer("threshold", (_half(self.bits) - 0.5) / self.inv_step1)

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        x = _checked(x)
        n = _half(self.bits)
        i, j = _softmax_index(x, n, self.inv_step1)
        shared = j * self.pow_m  # the R1 index of R2 level j, if there is one
        high = torch.where(shared <= n - 1, shared, j.add_(n - 1))
        return torch.where(x < self.threshold, i, high).to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        n = _half(self.bits)
        i, j = _softmax_index(x32, n, self.inv_step1)
        out = torch.where(x32 < self.threshold, i.div_(self.inv_step1), j.div_(n))
        return out.add_(0.0).to(x.dtype)  # -0.0 (negative input) -> +0.0

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = Δ2 · i · 2^(-m) in R1, Δ2 · j in R2 (Δ2 = 2^-(b-1)): mantissa i or j, shift m or 0."""
        x32 = x.to(torch.float32)
        i, j = _softmax_index(x32, _half(self.bits), self.inv_step1)
        reject_nan(j, "twin-uniform softmax")
        low = x32 < self.threshold
        mantissa = torch.where(low, i, j).to(torch.int64)
        shift = torch.where(low & (mantissa > 0), self.m, 0).to(torch.int64)
        step2 = torch.full(self.m.shape, 2.0 ** (1 - self.bits), dtype=torch.float64, device=self.m.device)
        return IntegerView(mantissa, shift, step2)

    def extra_repr(self) -> str:
        kind = f"per-channel x{self.m.numel()}" if self.m.numel() > 1 else f"m={int(self.m)}"
        return f"bits={self.bits}, softmax, {kind}, levels={self.max_levels}"


@register_quantizer
class TwinGeluQuantizer(Quantizer):
    """Twin uniform for post-GELU values: fixed Δn = 0.16997.../n, per-row positive step ``scale``."""

    kind: ClassVar[str] = "twin_gelu"
    integer_form: ClassVar[bool] = False
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"scale": torch.float32}

    def __init__(self, bits: int, scale: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ConfigError("twin-uniform positive step must be finite and > 0")
        self.register_buffer("scale", scale.clone(memory_format=torch.contiguous_format))

    @property
    def negative_step(self) -> float:
        return gelu_negative_step(self.bits)

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        x = _checked(x)
        n = _half(self.bits)
        i = torch.div(x, self.negative_step).round_().clamp_(-n, 0)  # -index of the negative level
        p = torch.div(x, self.scale).round_().clamp_(0, n - 1)
        neg = torch.where(i < 0, -i - 1, torch.full_like(i, n))
        return torch.where(x < 0, neg, p + n).to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        n, dn = _half(self.bits), self.negative_step
        neg = torch.div(x32, dn).round_().clamp_(-n, 0).mul_(dn)  # == -clamp(round(-x/Δn), 0, n)·Δn
        pos = torch.div(x32, self.scale).round_().clamp_(0, n - 1).mul_(self.scale)
        return torch.where(x32 < 0, neg, pos).add_(0.0).to(x.dtype)  # -0.0 -> +0.0

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """No integer form: negative levels are multiples of Δn, positive ones of Δp, in no 2^k ratio."""
        raise NotIntegerError(
            "twin-uniform gelu levels are i·Δn (Δn = 0.16997.../n fixed) and p·Δp (Δp searched): the two "
            "steps have no power-of-two ratio, so no single scale with integer mantissas and shifts covers "
            "both ranges; use uniform or adalog for integer-only inference"
        )

    def extra_repr(self) -> str:
        kind = f"per-channel x{self.scale.numel()}" if self.scale.numel() > 1 else "per-tensor"
        return f"bits={self.bits}, gelu, {kind}, levels={self.max_levels}"


# --------------------------------------------------------------------------- data-only fit


def softmax_pieces(bits: int, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax mode as buckets for :func:`piecewise_sq_error`: bounds ``[..., 2n-1]``, values ``[..., 2n]``.

    R1 levels iΔ1 split at (i + 1/2)Δ1, then the range split (n - 1/2)Δ1, then the R2 levels j/n
    (j = 1..n) split at max((j + 1/2)/n, range split) (empty buckets where R2 levels lie below R1's top).
    """
    n = _half(bits)
    d1 = torch.exp2(-(m.to(torch.float64) + (bits - 1))).unsqueeze(-1)
    i = torch.arange(n, dtype=torch.float64, device=m.device)
    j = torch.arange(1, n + 1, dtype=torch.float64, device=m.device)
    split = (n - 0.5) * d1
    bounds = torch.cat([(i[:-1] + 0.5) * d1, split, torch.maximum((j[:-1] + 0.5) / n, split)], dim=-1)
    values = torch.cat([i * d1, (j / n).expand(*d1.shape[:-1], n)], dim=-1)
    return bounds, values


def gelu_pieces(bits: int, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU mode as buckets: negative levels -kΔn split at -(k + 1/2)Δn, the sign split at 0, then the
    positive levels pΔp split at (p + 1/2)Δp: ``bounds [..., 2n]``, ``values [..., 2n + 1]``."""
    n = _half(bits)
    dn = gelu_negative_step(bits)
    dp = scale.to(torch.float64).unsqueeze(-1)
    k = torch.arange(n, -1, -1, dtype=torch.float64, device=scale.device)  # n .. 0: ascending negatives
    p = torch.arange(n, dtype=torch.float64, device=scale.device)
    neg_bounds = (-(k[:-1] - 0.5) * dn).expand(*dp.shape[:-1], n)
    bounds = torch.cat([neg_bounds, torch.zeros_like(dp), (p[:-1] + 0.5) * dp], dim=-1)
    neg_values = (-k * dn).expand(*dp.shape[:-1], n + 1)
    values = torch.cat([neg_values, p * dp], dim=-1)
    return bounds, values


def twin_sq_error(rows: torch.Tensor, bits: int, mode: str, params: torch.Tensor) -> torch.Tensor:
    """Summed squared error ``[K, R]`` on ``rows [R, M]`` for candidates ``params [K, R]`` (m or Δp)."""
    bounds, values = (softmax_pieces if mode == "softmax" else gelu_pieces)(bits, params)
    return piecewise_sq_error(sort_rows(rows), bounds, values)


def softmax_m_grid(rows: torch.Tensor) -> torch.Tensor:
    """m candidates ``[20, R]``: 0..19 for every row."""
    m = torch.tensor(SOFTMAX_M, dtype=torch.float32, device=rows.device)
    return m.unsqueeze(1).expand(-1, rows.shape[0])


def gelu_scale_grid(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Δp candidates ``[100, R]``: linspace(0.5, 1.2) · max(x) / (n - 1) (max 0.16997... if none > 0)."""
    top = rows.amax(dim=1)
    top = torch.where(top > 0, top, torch.full_like(top, GELU_MIN_ABS))
    t = torch.linspace(*GELU_RANGE, GELU_SCALES, device=rows.device).unsqueeze(1)
    return (t * (top / (_half(bits) - 1))).clamp(min=torch.finfo(torch.float32).tiny)


def _best(candidates: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """Per row, the candidate with the least error (first on ties)."""
    return candidates.gather(0, err.argmin(dim=0, keepdim=True))[0]


@register_spec
@dataclass(frozen=True, kw_only=True)
class TwinUniformSpec(QuantSpec):
    """Twin uniform (PTQ4ViT), ``mode`` softmax (searches m in 0..19, discrete) or gelu (searches Δp over
    100 values in [0.5, 1.2]·max/(n-1), continuous and refinable); initialised by the least squared error."""

    mode: str = "softmax"

    kind: ClassVar[str] = "twin_uniform"

    def __post_init__(self) -> None:
        if self.mode not in TWIN_MODES:
            raise ConfigError(f"twin_uniform mode must be one of {TWIN_MODES}, got {self.mode!r}")
        super().__post_init__()

    @property
    def nonnegative(self) -> bool:  # type: ignore[override]  # depends on the mode
        return self.mode == "softmax"

    @property
    def refinable(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if self.mode == "softmax" else ("scale",)

    @property
    def format_name(self) -> str:
        return f"TwinUniform-{self.mode}"

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def check_input(self, rows: torch.Tensor, where: str) -> None:
        if self.mode == "softmax":
            lo, hi = float(rows.min()), float(rows.max())
            if lo < 0 or hi > SOFTMAX_MAX:
                raise NumericalError(
                    f"{where}: {self.format_name} needs probabilities in [0, 1], got range [{lo}, {hi}]"
                )

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        if self.mode == "softmax":
            cand = softmax_m_grid(rows)
            return {"m": _best(cand, twin_sq_error(rows, self.bits, self.mode, cand))}
        cand = gelu_scale_grid(rows, self.bits)
        return {"scale": _best(cand, twin_sq_error(rows, self.bits, self.mode, cand))}

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        if self.mode == "softmax":
            return {"m": softmax_m_grid(rows)}
        return {"scale": gelu_scale_grid(rows, self.bits)}

    def build(self, params: Params, shape: tuple[int, ...]) -> Quantizer:
        if self.mode == "softmax":
            return TwinSoftmaxQuantizer(self.bits, params["m"].reshape(shape))
        return TwinGeluQuantizer(self.bits, params["scale"].reshape(shape))
