"""Symmetric fixed-point quantizer for the residual stream (integer residual adds, as in I-ViT).

    q  = clamp(round(x · (1/S)), -T, T),   T = 2^(b-1) - 1
    x̂ = q · S

with step S > 0 (per tensor, or one per row) and no zero point. Wide formats (default b = 24) keep the
residual stream of an integer-only ViT: it carries the sum of every block's output, so it needs far
more than the 8 bits of the operands of a matmul. Emits at most 2^b - 1 distinct values (codes
q + T in [0, 2^b - 2]); ``1/S`` is computed once in float32 and ``round`` is half-to-even, as
:class:`~vitquant.quantizers.uniform.UniformQuantizer`.

Integer form: mantissa q, no shift, scale S. ``|q| < 2^31``, so the float64 product q·S is exact and
rounds once to float32, as ``forward``'s product does.

The data-only fit (:class:`FixedPointSpec`) is ``S = margin · max|x| / T`` with ``margin`` 2 by
default: room for inputs twice as large as any seen in calibration before the clamp acts. It does not
train in block reconstruction (``trainable`` False: 24 bits leave nothing for a learned step to gain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.integer_view import IntegerView, reject_nan
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.state import register_quantizer

BIT_RANGE = (8, 31)
MIN_STEP = 1e-30  # step of an all-zero (constant) input: any value quantizes to 0 exactly


@register_quantizer
class FixedPointQuantizer(Quantizer):
    """Symmetric fixed point with fitted ``scale`` (S); ``scale`` broadcasts against the input."""

    kind: ClassVar[str] = "fixed_point"
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"scale": torch.float32}

    def __init__(self, bits: int, scale: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits, "fixed-point bit width", *BIT_RANGE)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ConfigError("fixed-point quantizer scale must be finite and > 0")
        self.register_buffer("scale", scale)
        self.register_buffer("inv_scale", 1.0 / scale)

    @property
    def top(self) -> int:
        """The largest code magnitude T = 2^(b-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    @property
    def max_levels(self) -> int:
        return 2 * self.top + 1

    def _signed_codes(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.inv_scale).round_().clamp_(-self.top, self.top)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self._signed_codes(x).add_(self.top).to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._signed_codes(x).mul_(self.scale)

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = S · q: mantissa q, no shift, scale S (float64)."""
        signed = self._signed_codes(x)
        reject_nan(signed, "fixed-point quantizer")
        return IntegerView(signed.to(torch.int64), None, self.scale.to(torch.float64))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, levels={self.max_levels}"


@register_spec
@dataclass(frozen=True, kw_only=True)
class FixedPointSpec(QuantSpec):
    """Symmetric fixed point, ``S = margin · max|x| / (2^(b-1) - 1)`` per row (data-only fit)."""

    bits: int = 24
    margin: float = 2.0
    kind: ClassVar[str] = "fixed_point"
    bit_range: ClassVar[tuple[int, int]] = BIT_RANGE

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.margin >= 1.0:
            raise ConfigError(f"fixed-point margin must be >= 1, got {self.margin}")

    @property
    def format_name(self) -> str:
        return f"fixed{self.bits}"

    @property
    def max_levels(self) -> int:
        return 2**self.bits - 1

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        top = 2 ** (self.bits - 1) - 1
        scale = (rows.abs().amax(dim=1).double() * self.margin / top).clamp(min=MIN_STEP)
        return {"scale": scale.to(torch.float32)}

    def build(self, params: Params, shape: tuple[int, ...]) -> FixedPointQuantizer:
        return FixedPointQuantizer(self.bits, params["scale"].reshape(shape))
