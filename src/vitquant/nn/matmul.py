"""An explicit activation-activation matmul with a quantization point on each operand.

``QuantMatMul(a, b) = Q_a(a) @ Q_b(b)``: q @ kᵀ and attn @ v in the attention rewrites. Like
:class:`~vitquant.nn.linear.QuantLinear` it is a *consumer*: the calibration pipeline reads its
operands (``input_points``) and recomputes its output for candidate quantizers (``consume``).
"""

from __future__ import annotations

import torch
from torch import nn

from vitquant.nn.quant_point import QuantPoint


class QuantMatMul(nn.Module):
    """``a @ b`` with quantization points ``a_quant`` and ``b_quant``.

    Operands are ``[..., heads, rows, cols]``: ``head_dim=1``; ``a`` has its channels (the contracted
    axis) last, ``b`` on axis -2.
    """

    def __init__(self, a_role: str, b_role: str) -> None:
        super().__init__()
        self.a_quant = QuantPoint(a_role, channel_dim=-1, head_dim=1)
        self.b_quant = QuantPoint(b_role, channel_dim=-2, head_dim=1)

    def input_points(self) -> list[QuantPoint]:
        return [self.a_quant, self.b_quant]

    @staticmethod
    def consume(operands: list[torch.Tensor]) -> torch.Tensor:
        return operands[0] @ operands[1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_quant(a) @ self.b_quant(b)
