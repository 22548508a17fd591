"""Asymmetric uniform quantizer (RepQ-ViT, PTQ4ViT; per-tensor or per-channel).

    q  = clamp(round(x * (1/Δ)) + z, 0, 2^b - 1)
    x̂ = (q - z) * Δ

with step Δ > 0 and integer zero point z (which may lie outside ``[0, 2^b - 1]``, as RepQ-ViT's
``round(-min/Δ)`` allows). ``1/Δ`` is computed once in float32; this is bit-identical to
``torch.fake_quantize_per_tensor_affine`` and several times faster on CPU. ``round`` is
round-half-to-even. Emits at most ``2^b`` distinct values (per channel).

Integer form (:meth:`UniformQuantizer.to_integer`): mantissa q - z (signed), no shift, scale Δ. The float32
product (q - z)·Δ is the float64 one rounded once (|q - z| < 2^24), so the view dequantizes bit for bit.
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

#: the widest uniform quantizer: the 16-bit inputs of integer kernels (:mod:`.kernel_input`); the
#: specs of weights and matmul operands stay within 2..8 bits
WIDE_BITS = 16


@register_quantizer
class UniformQuantizer(Quantizer):
    """Uniform affine quantizer with fitted ``scale`` (Δ) and ``zero_point`` (z).

    ``scale`` and ``zero_point`` are already shaped to broadcast against the tensors they quantize:
    a scalar for per-tensor, e.g. ``[C, 1]`` for per-output-channel weights or ``[C]`` for per-channel
    activations whose channels are the last dimension.
    """

    kind: ClassVar[str] = "uniform"
    trainable: ClassVar[bool] = True  # LSQ step (activations), AdaRound rounding (weights)
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"scale": torch.float32, "zero_point": torch.int64}

    def __init__(self, bits: int, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits, high=WIDE_BITS)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        zero_point = torch.as_tensor(zero_point, dtype=torch.float32)
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ConfigError("uniform quantizer scale must be finite and > 0")
        if not torch.isfinite(zero_point).all() or (zero_point != zero_point.round()).any():
            raise ConfigError("uniform quantizer zero point must be a finite integer")
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.register_buffer("inv_scale", 1.0 / scale)
        # clamp(round(.) + z, 0, qmax) - z == clamp(round(.), -z, qmax - z) on float integers: 4 passes
        self.register_buffer("code_min", -zero_point)
        self.register_buffer("code_max", (2**self.bits - 1) - zero_point)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    @property
    def per_channel(self) -> bool:
        return self.scale.numel() > 1

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        q = x * self.inv_scale
        return q.round_().add_(self.zero_point).clamp_(0, self.qmax).to(torch.int64)

    def integer_view(self, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q - z, Δ) of an already-quantized ``x_hat = (q - z)·Δ``: integer values (float64) and the
        float64 step, the input an integer kernel takes."""
        ints = torch.round(x_hat.double() / self.scale.double())
        return ints, self.scale.double()

    def _signed_codes(self, x: torch.Tensor) -> torch.Tensor:
        """q - z = clamp(round(x · (1/Δ)), -z, 2^b - 1 - z) as floats (x's dtype)."""
        q = x * self.inv_scale
        return q.round_().clamp_(self.code_min, self.code_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._signed_codes(x).mul_(self.scale)

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = Δ · (q - z): mantissa q - z, no shift, scale Δ (float64)."""
        signed = self._signed_codes(x)
        reject_nan(signed, "uniform quantizer")
        return IntegerView(signed.to(torch.int64), None, self.scale.to(torch.float64))

    def extra_repr(self) -> str:
        kind = f"per-channel x{self.scale.numel()}" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, {kind}, levels={self.max_levels}"


# --------------------------------------------------------------------------- spec

SEARCH_SCALES = 32  # scale candidates of the metric searches (zero points: up to 16)
MAX_ZERO_POINTS = 16


@register_spec
@dataclass(frozen=True, kw_only=True)
class UniformSpec(QuantSpec):
    """Asymmetric uniform: initialised by RepQ-ViT's percentile/MSE rule; searched over (Δ, z).

    Metric-search grid (AdaLog's FPCS candidates): Δ from (P90 - P10)/(2^b - 1) to (max - min)/(2^b - 1)
    (continuous, refinable), z over the integers 0..2^b - 1 (16 evenly spaced above 4 bits).
    """

    kind: ClassVar[str] = "uniform"
    refinable: ClassVar[tuple[str, ...]] = ("scale",)

    @property
    def format_name(self) -> str:
        return "uniform"

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        from vitquant.search.percentile_mse import search_uniform_params

        scale, zero = search_uniform_params(rows, self.bits)
        return {"scale": scale, "zero_point": zero}

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        from vitquant.search.quantiles import row_quantiles

        qmax = 2**self.bits - 1
        lo, hi = row_quantiles(rows, [0.1, 0.9])
        narrow = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
        wide = ((rows.amax(dim=1) - rows.amin(dim=1)) / qmax).clamp(min=narrow)
        t = torch.linspace(0, 1, SEARCH_SCALES).unsqueeze(1)
        zeros = torch.linspace(0, qmax, min(qmax + 1, MAX_ZERO_POINTS)).round().unsqueeze(1)
        return {"scale": narrow + t * (wide - narrow), "zero_point": zeros.expand(-1, rows.shape[0])}

    def build(self, params: Params, shape: tuple[int, ...]) -> UniformQuantizer:
        return UniformQuantizer(self.bits, params["scale"].reshape(shape), params["zero_point"].reshape(shape))
