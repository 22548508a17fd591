"""log√2 quantizer for post-softmax attention (RepQ-ViT, ICCV 2023).

    c  = round(-2 · log2(x / Δ))                      (float32, round-half-to-even)
    x̂ = 0                                             if c >= 2^b          (and x = 0)
    x̂ = 2^(-ceil(q/2)) · (√2 if q is odd) · Δ         q = clamp(c, 0, q_max)

Variants (named by the distinct values they emit at 4 bit):

- ``Sqrt2_17`` (the published code): q_max = 2^b - 1, so 2^b non-zero levels + zero = 2^b + 1 values.
- ``Sqrt2_16``: q_max = 2^b - 2, so 2^b - 1 non-zero levels + zero = 2^b values. Codes equal to
  2^b - 1 are clamped onto the smallest non-zero level; only c >= 2^b becomes zero.

Matches the published outputs in ``shared/testvectors/Sqrt2.csv`` (tests/quantizers/test_log_sqrt2.py).

Simulation evaluates 2^(-ceil(q/2)) · (√2 if odd) as ``exp2(-q/2)``: the same number, and bit-identical
in float32 for every code 0..256 (checked exhaustively in the tests), without a table gather.

Integer form (:meth:`LogSqrt2Quantizer.to_integer`): √2 is irrational, but the simulation multiplies Δ by
the float w = exp2(-q/2), a dyadic rational: w = μ · 2^(-shift) with odd μ = 1 (even q) or μ = 11863283
(odd q: float32's √2 = 11863283 · 2^-23), so x̂ = Δ · μ · 2^(-shift) exactly (scale Δ). An integer kernel
reproduces the simulation bit for bit only with that 24-bit √2 constant; a shorter one (e.g. 1.5) is a
different format. At 8 bits the deepest codes make w subnormal in float32: μ is then whatever odd integer
float32 kept, still exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.integer_view import IntegerView, dyadic, reject_nan
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.state import register_quantizer

VARIANTS = (16, 17)


def log_sqrt2_max_levels(bits: int, variant: int) -> int:
    """Distinct values of the format: 2^b + 1 (``Sqrt2_17`` style) or 2^b (``Sqrt2_16`` style), zero included."""
    return 2**bits + 1 if variant == 17 else 2**bits


def log_sqrt2_levels(bits: int, variant: int, delta: torch.Tensor) -> torch.Tensor:
    """Dequantized value of every code: index q in [0, q_max] is a non-zero level, the last is zero."""
    q_max = 2**bits - 1 if variant == 17 else 2**bits - 2
    q = torch.arange(q_max + 1, dtype=torch.float32)
    odd = (q % 2) * (math.sqrt(2) - 1) + 1
    nonzero = 2 ** (-1 * torch.ceil(q / 2)) * odd * delta.to(torch.float32)
    return torch.cat([nonzero, torch.zeros(1)])


@register_quantizer
class LogSqrt2Quantizer(Quantizer):
    """log√2 quantizer with fitted scale ``delta`` (Δ, the largest level), per tensor or broadcast-shaped."""

    kind: ClassVar[str] = "log_sqrt2"
    meta_types: ClassVar[dict[str, type]] = {"bits": int, "variant": int}
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"delta": torch.float32}

    def __init__(self, bits: int, variant: int, delta: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        if variant not in VARIANTS:
            raise ConfigError(f"log-sqrt2 variant must be 16 or 17, got {variant!r}")
        self.variant = variant
        delta = torch.as_tensor(delta, dtype=torch.float32)
        if not torch.isfinite(delta).all() or (delta <= 0).any():
            raise ConfigError(f"log-sqrt2 delta must be finite and > 0, got {delta.flatten()[:4].tolist()}")
        self.register_buffer("delta", delta)

    @property
    def q_max(self) -> int:
        return 2**self.bits - 1 if self.variant == 17 else 2**self.bits - 2

    def levels(self) -> torch.Tensor:
        """The dequantized value of every code (``levels()[codes(x)] == forward(x)``); per tensor only."""
        if self.delta.numel() != 1:
            raise ConfigError("levels() needs a per-tensor log-sqrt2 quantizer")
        return log_sqrt2_levels(self.bits, self.variant, self.delta.reshape(()))

    @property
    def zero_code(self) -> int:
        return self.q_max + 1

    @property
    def max_levels(self) -> int:
        return log_sqrt2_max_levels(self.bits, self.variant)

    def _log_code(self, x: torch.Tensor) -> torch.Tensor:
        """c = round(-2 · log2(x / Δ)) in float32 (NaN stays NaN)."""
        return torch.div(x, self.delta).log2_().mul_(-2).round_()

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        c = self._log_code(x)
        if torch.isnan(c).any():
            raise ValueError("log-sqrt2 quantizer got NaN or negative input")
        zero = c >= 2**self.bits
        return c.clamp_(0, self.q_max).masked_fill_(zero, self.zero_code).to(torch.int64)

    def _unit_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2^(-q/2) with q = clamp(c, 0, q_max), mask of c >= 2^b: the zero level)."""
        c = self._log_code(x)
        zero = c >= 2**self.bits
        return c.clamp_(0, self.q_max).mul_(-0.5).exp2_(), zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit, zero = self._unit_level(x)
        return unit.mul_(self.delta).masked_fill_(zero, 0.0).to(x.dtype)

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = Δ · μ · 2^(-shift) with 2^(-q/2) = μ · 2^(-shift) exactly (odd μ; 0 for the zero level)."""
        unit, zero = self._unit_level(x)
        reject_nan(unit, f"log-sqrt2 (Sqrt2_{self.variant})")
        mantissa, shift = dyadic(unit)
        return IntegerView(mantissa.masked_fill_(zero, 0), shift.masked_fill_(zero, 0), self.delta.to(torch.float64))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, variant=Sqrt2_{self.variant}, levels={self.max_levels}"


@register_spec
@dataclass(frozen=True, kw_only=True)
class LogSqrt2Spec(QuantSpec):
    """log√2 (RepQ-ViT): ``variant`` 16 or 17; Δ by the quantile/MSE rule, or searched over a Δ grid."""

    variant: int = 17

    kind: ClassVar[str] = "log_sqrt2"
    nonnegative: ClassVar[bool] = True
    refinable: ClassVar[tuple[str, ...]] = ("delta",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"log_sqrt2 needs variant 16 or 17, got {self.variant!r}")

    @property
    def format_name(self) -> str:
        return f"Sqrt2_{self.variant}"

    @property
    def max_levels(self) -> int:
        return log_sqrt2_max_levels(self.bits, self.variant)

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        from vitquant.search.log_sqrt2_delta import search_log_sqrt2_delta

        return {"delta": search_log_sqrt2_delta(rows, self.bits, self.variant)}

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        """Δ from half the initial Δ to the row maximum (32 values)."""
        top = rows.amax(dim=1)
        low = (init["delta"] * 0.5).clamp(max=top)
        t = torch.linspace(0, 1, 32).unsqueeze(1)
        return {"delta": (low + t * (top - low)).clamp(min=torch.finfo(torch.float32).tiny)}

    def build(self, params: Params, shape: tuple[int, ...]) -> LogSqrt2Quantizer:
        return LogSqrt2Quantizer(self.bits, self.variant, params["delta"].reshape(shape))
