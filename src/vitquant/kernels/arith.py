"""Integer arithmetic with two interchangeable backends: real integers, and its float simulation.

Every integer kernel (:mod:`vitquant.kernels`) is written once against :class:`Arith`. The
:data:`INT` backend runs on ``torch.int64`` tensors with integer operations only (floor division,
arithmetic shifts); the :data:`FLOAT` backend runs the *same* arithmetic on ``torch.float64`` tensors
holding integer values, with ``floor`` after every division and shift, as a fake-quantized model does.

The two agree exactly while every intermediate value stays below 2^52 in magnitude: float64 holds
such integers exactly, products below 2^53 are exact, and ``floor(a / b)`` is exact because a
quotient just below an integer k differs from k by at least 1/|b| > 2^-52 · k (relative), more than
the half-ulp rounding of the division. Kernels document their accumulator ranges against this bound
(:data:`EXACT_LIMIT`) and tests check them at the extremes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: magnitude below which both backends are exact (float64 integers and floor-divisions)
EXACT_LIMIT = 2**52


@dataclass(frozen=True)
class Arith:
    """Elementwise integer operations on one dtype (see the module docstring)."""

    name: str
    dtype: torch.dtype

    @property
    def is_integer(self) -> bool:
        return not self.dtype.is_floating_point

    def tensor(self, x: torch.Tensor | int | float) -> torch.Tensor:
        """An integer-valued tensor in this backend's dtype (float inputs must hold integers)."""
        t = torch.as_tensor(x)
        if t.is_floating_point() and self.is_integer:
            if not torch.equal(t, t.round()):
                raise ValueError("integer backend given non-integer values")
        return t.to(self.dtype)

    def floor_div(self, a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
        """floor(a / b)."""
        if self.is_integer:
            return torch.div(a, b, rounding_mode="floor")
        return torch.floor(a / b)

    def shift_right(self, a: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """floor(a / 2^k) for k >= 0 (an arithmetic shift)."""
        if self.is_integer:
            return torch.bitwise_right_shift(a, k)
        return torch.floor(a * torch.exp2(-torch.as_tensor(k, dtype=self.dtype)))

    def shift_left(self, a: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """a · 2^k for k >= 0."""
        if self.is_integer:
            return torch.bitwise_left_shift(a, k)
        return a * torch.exp2(torch.as_tensor(k, dtype=self.dtype))

    def round_shift(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """round(a / 2^k) with ties upwards: floor((a + 2^(k-1)) / 2^k); a plain copy when k == 0."""
        if k == 0:
            return a
        return self.shift_right(a + 2 ** (k - 1), k)


INT = Arith("int", torch.int64)
FLOAT = Arith("float", torch.float64)
BACKENDS = {"int": INT, "float": FLOAT}


def check_exact(x: torch.Tensor, what: str) -> None:
    """Raise if ``x`` leaves the range where both backends agree (for tests and debug runs)."""
    if x.numel() and x.abs().max().item() >= EXACT_LIMIT:
        raise OverflowError(f"{what}: |value| reaches 2^52, beyond exact float64 simulation")
