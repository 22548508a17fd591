"""An activation followed by a constant shift: ``act(x) + c`` (AdaLog's post-GELU reparameterization)."""

from __future__ import annotations

import torch
from torch import nn


class ShiftedActivation(nn.Module):
    """``act(x) + shift``; with ``shift = -min act`` the output is non-negative (GELU: 0.16997...)."""

    def __init__(self, act: nn.Module, shift: float) -> None:
        super().__init__()
        self.act = act
        self.shift = float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) + self.shift

    def extra_repr(self) -> str:
        return f"shift={self.shift}"
