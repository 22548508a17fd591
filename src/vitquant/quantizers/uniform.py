"""Asymmetric uniform quantizer (RepQ-ViT, PTQ4ViT; per-tensor or per-channel).

    q  = clamp(round(x * (1/Δ)) + z, 0, 2^b - 1)
    x̂ = (q - z) * Δ

with step Δ > 0 and integer zero point z (which may lie outside ``[0, 2^b - 1]``, as RepQ-ViT's
``round(-min/Δ)`` allows). ``1/Δ`` is computed once in float32; this is bit-identical to
``torch.fake_quantize_per_tensor_affine`` and several times faster on CPU. ``round`` is
round-half-to-even. Emits at most ``2^b`` distinct values (per channel).
"""

from __future__ import annotations

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer, check_bits


class UniformQuantizer(Quantizer):
    """Uniform affine quantizer with fitted ``scale`` (Δ) and ``zero_point`` (z).

    ``scale`` and ``zero_point`` are already shaped to broadcast against the tensors they quantize:
    a scalar for per-tensor, e.g. ``[C, 1]`` for per-output-channel weights or ``[C]`` for per-channel
    activations whose channels are the last dimension.
    """

    def __init__(self, bits: int, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x * self.inv_scale
        return q.round_().clamp_(self.code_min, self.code_max).mul_(self.scale)

    def extra_repr(self) -> str:
        kind = f"per-channel x{self.scale.numel()}" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, {kind}, levels={self.max_levels}"
