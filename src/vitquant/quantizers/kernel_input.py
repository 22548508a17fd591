"""The wide symmetric format of an integer kernel's input (LayerNorm, GELU): its producer's value,
narrowed only as far as the kernel's input bound needs.

    q = clamp(round(x / Δ), -2^(b-1), 2^(b-1) - 1),   Δ = margin · max|x| / (2^(b-1) - 1)

stored as a :class:`~vitquant.quantizers.uniform.UniformQuantizer` with zero point ``z = 2^(b-1)`` (codes
``q + z`` in ``0..2^b - 1``, integers ``q`` with ``|q| <= 2^(b-1) < 2^16`` at b = 16), so every integer
path that takes a uniform point takes it unchanged. Emits at most 2^b distinct values.

Why: the published integer kernels take wide integers: I-ViT's I-LayerNorm the 16-bit residual stream,
I-BERT's LayerNorm its 22-bit residual and its GELU the 32-bit accumulator of the matmul before it. A
per-tensor 6- or 8-bit re-quantization in front of them throws away most of what they could use (a
LayerNorm output SQNR of ~26-30 dB instead of ~75 dB on DeiT-Tiny). b = 16 is the widest input every
kernel here accepts (|x| < 2^16); ``margin`` (2 by default, as the residual stream's
:class:`~vitquant.quantizers.fixed_point.FixedPointSpec`) leaves room for held-out inputs twice as
large as any calibration input before the clamp acts, at the cost of one bit. Data-only fit; does not
train in reconstruction or QAT (16 bits leave nothing for a learned step to gain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.uniform import WIDE_BITS, UniformQuantizer

KERNEL_INPUT_BITS = 16  # |q| <= 2^15: every kernel's input bound (|x| < 2^16) holds
_TINY = torch.finfo(torch.float32).tiny


@register_spec
@dataclass(frozen=True, kw_only=True)
class KernelInputSpec(QuantSpec):
    """Symmetric, one step per tensor, ``Δ = margin · max|x| / (2^(b-1) - 1)`` (data-only fit)."""

    bits: int = KERNEL_INPUT_BITS
    margin: float = 2.0
    kind: ClassVar[str] = "kernel_input"
    bit_range: ClassVar[tuple[int, int]] = (8, WIDE_BITS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.margin >= 1.0:
            raise ConfigError(f"kernel input margin must be >= 1, got {self.margin}")

    @property
    def format_name(self) -> str:
        return f"int{self.bits}"

    @property
    def max_levels(self) -> int:
        return 2**self.bits

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        top = 2 ** (self.bits - 1) - 1
        peak = rows.abs().amax(dim=1).double()
        scale = (peak * self.margin / top).clamp(min=_TINY).to(torch.float32)
        zero = torch.full_like(scale, float(2 ** (self.bits - 1)))
        return {"scale": scale, "zero_point": zero}

    def build(self, params: Params, shape: tuple[int, ...]) -> UniformQuantizer:
        return UniformQuantizer(self.bits, params["scale"].reshape(shape), params["zero_point"].reshape(shape))
