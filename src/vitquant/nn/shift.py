"""An activation followed by a constant shift: ``act(x) + c`` (AdaLog's post-GELU reparameterization)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vitquant.integer.exact import ExactStep


class ShiftedActivation(nn.Module):
    """``max(act(x) + shift, 0)``; with ``shift = -min act`` the output is non-negative (GELU: 0.16997...).

    The clamp only acts where ``act`` is an integer GELU kernel whose approximation dips below the exact
    GELU's minimum (I-BERT's i-GELU and I-ViT's ShiftGELU do, by up to ~0.002, once their inputs are fine
    enough to reach it): the log quantizer after it takes non-negative inputs only. The integer program's
    post-GELU table applies the same clamp (:func:`vitquant.integer.convert.shifted_gelu_table`)."""

    exact: ExactStep | None = None  # the exact simulation's step (vitquant.integer.exact), when switched on

    def __init__(self, act: nn.Module, shift: float) -> None:
        super().__init__()
        self.act = act
        self.shift = float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact is not None:  # the GELU input's requantization, then the program's table of fc2's levels
            return self.exact(x)
        return torch.clamp(self.act(x) + self.shift, min=0.0)

    def extra_repr(self) -> str:
        return f"shift={self.shift}"
