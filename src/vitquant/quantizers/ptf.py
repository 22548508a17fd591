"""FQ-ViT's Power-of-Two Factor (PTF) quantizer for LayerNorm inputs (IJCAI 2022).

One uniform grid with step s shared by all channels, each channel c stretched by a factor 2^α_c,
α_c ∈ {0, …, K} (K = 3):  x̂_c = (clamp(round(x_c / (s·2^α_c)) + z, 0, 2^b - 1) - z) · s·2^α_c.
The integer LayerNorm then shifts channel c's integers left by α_c to reach the common step s, so
the inter-channel variation of ViT residual streams costs no per-channel scales in the kernel.
Emits at most 2^b distinct values per channel. The fit (a global min/max range for the largest
factor, α_c by the smallest MSE) is :func:`vitquant.kernels.fqvit.fit_ptf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.base import MIN_BITS
from vitquant.quantizers.uniform import WIDE_BITS, UniformQuantizer


@register_spec
@dataclass(frozen=True, kw_only=True)
class PTFSpec(QuantSpec):
    """Per-channel power-of-two factors over one step (data-only fit; channel granularity)."""

    granularity: str = "channel"
    kind: ClassVar[str] = "ptf"
    bit_range: ClassVar[tuple[int, int]] = (MIN_BITS, WIDE_BITS)  # 16: the kernels' own input width

    @property
    def format_name(self) -> str:
        return "ptf"

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        from vitquant.kernels.fqvit import fit_ptf

        scale, zero = fit_ptf(rows.t(), self.bits)  # rows are channels: [C, M] -> [M, C]
        zero = torch.zeros_like(scale) if zero is None else torch.as_tensor(zero, dtype=torch.float32).expand_as(scale)
        return {"scale": scale.to(torch.float32), "zero_point": zero.to(torch.float32)}

    def build(self, params: Params, shape: tuple[int, ...]) -> UniformQuantizer:
        return UniformQuantizer(self.bits, params["scale"].reshape(shape), params["zero_point"].reshape(shape))
