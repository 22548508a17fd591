"""Integers and their scale: the values an integer kernel takes and returns in the simulation.

    x = ints · scale

``ints`` is a float64 tensor holding integers (the :data:`~vitquant.kernels.arith.FLOAT` backend of
the kernels), ``scale`` a float64 tensor that broadcasts against it (one value, or one per head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntTensor:
    ints: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.ints * self.scale).to(dtype)

    def __add__(self, other: torch.Tensor) -> IntTensor:
        """``self + other`` with ``other`` (a float tensor, ``-inf`` allowed for masks) rounded onto this
        grid: ``ints + round(other / scale)``, clamped at ±2^38 (a masked logit stays finite and far)."""
        on_grid = torch.round(other.double() / self.scale).clamp(-(2.0**38), 2.0**38)
        return IntTensor(self.ints + on_grid, self.scale)
