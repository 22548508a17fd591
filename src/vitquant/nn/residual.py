"""The residual add of a transformer block as a replaceable module with an integer residual point.

    float:    out = x + y
    integer:  out = Q_r(x) + Q_r(y),   Q_r: symmetric fixed point, step S_r (24 bits by default)

In the integer form the skip ``x`` and the block's branch output ``y`` are both put onto the residual
grid S_r and added as integers (``q_x + q_y`` at S_r, |q| <= 2^23 - 1 each), as an integer-only
program does (I-ViT's integer residual stream; :mod:`vitquant.integer.convert` reads S_r from here).
The point ``residual`` is fitted on both operands (``point_operands``), so neither is clamped on the
calibration images (:class:`~vitquant.quantizers.fixed_point.FixedPointSpec`: S_r = 2·max|x|/T).

Which adds are integer is configuration (:class:`~vitquant.nonlinear.config.NonlinearConfig`,
op ``residual``): float unless asked for, so the model's function is unchanged by default.
Like a Linear it is a calibration *consumer* (``input_points``, ``consume``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.quantizers.spec import QuantSpec

RESIDUAL = "residual"  # role of the residual point

if TYPE_CHECKING:
    from vitquant.integer.exact import ExactStep


class QuantResidualAdd(nn.Module):
    """``x + y``, or ``Q_r(x) + Q_r(y)`` once given a residual spec (:meth:`set_spec`)."""

    exact: ExactStep | None = None  # the exact simulation's step (vitquant.integer.exact), when switched on

    def __init__(self) -> None:
        super().__init__()
        self.layer_name = ""
        self.residual_quant: QuantPoint | None = None

    def set_spec(self, spec: QuantSpec | None) -> None:
        """Make the add integer with ``spec`` for its residual point (``None``: float add)."""
        if spec is None:
            self.residual_quant = None
            return
        self.residual_quant = QuantPoint(RESIDUAL, channel_dim=-1)
        self.residual_quant.spec = spec

    def input_points(self) -> list[QuantPoint]:
        return [] if self.residual_quant is None else [self.residual_quant]

    @staticmethod
    def point_operands() -> list[tuple[int, ...]]:
        """The residual point is fitted on both operands together."""
        return [(0, 1)]

    @staticmethod
    def consume(operands: list[torch.Tensor]) -> torch.Tensor:
        return operands[0] + operands[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.exact is not None:  # both operands requantized from their producers' integers, added
            return self.exact(x, y)
        point = self.residual_quant
        if point is None or point.mode is Mode.FLOAT:
            return x + y
        return point(x) + point(y)

    def extra_repr(self) -> str:
        return "integer" if self.residual_quant is not None else "float"
