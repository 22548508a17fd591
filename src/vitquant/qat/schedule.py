"""The learning-rate schedule of quantization-aware training: linear warm-up, then a cosine to 0.

For step s of T (0-based) with W warm-up steps, the rate is the base rate times

    f(s) = (s + 1) / (W + 1)                                  s < W
    f(s) = ½ (1 + cos(π (s - W) / (T - W)))                   W <= s < T

so the warm-up climbs to the base rate at step W, and the last step still has a small positive rate
(the cosine of SGDR, Loshchilov & Hutter, ICLR 2017, with a linear warm-up as in DeiT). The factor is a
pure function of the step: a resumed run needs nothing but the step to continue the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vitquant.errors import ConfigError


@dataclass(frozen=True)
class CosineWarmup:
    """The factor f(s) of ``total`` steps with ``warmup`` warm-up steps (see the module docstring)."""

    total: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or not 0 <= self.warmup < max(self.total, 1):
            raise ConfigError(f"a schedule needs 0 <= warm-up < steps, got {self.warmup} warm-up steps of {self.total}")

    def factor(self, step: int) -> float:
        if not 0 <= step < self.total:
            raise ValueError(f"step {step} outside the schedule's 0..{self.total - 1}")
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - self.warmup) / (self.total - self.warmup)))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every parameter group's rate to its base rate (``base_lr``) times f(``step``)."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
