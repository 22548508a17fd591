"""The integer form of a quantized tensor: what an integer-only kernel consumes.

    x̂ = scale · mantissa · 2^(-shift)        elementwise

``mantissa`` and ``shift`` are int64 tensors shaped like x (``shift`` None: 0 everywhere, the uniform
formats); ``scale`` is float64, shaped like the quantizer's parameters (one value per tensor, channel or
head). :meth:`IntegerView.dequantize` evaluates the formula in float64: ``mantissa · 2^(-shift)`` is
exact (|mantissa| < 2^53, shift < 1000) and the product with ``scale`` rounds once, so for the formats
here ``view.dequantize().to(torch.float32)`` equals the float32 ``forward`` bit for bit (zero is always
+0.0: an integer has no -0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitquant.errors import ConfigError, NotIntegerError, NumericalError

__all__ = ["IntegerView", "NotIntegerError", "dyadic", "reject_nan"]


@dataclass(frozen=True, eq=False)
class IntegerView:
    """x̂ = scale · mantissa · 2^(-shift), elementwise (scale broadcast per tensor/channel/head)."""

    mantissa: torch.Tensor  # int64, shaped like x
    shift: torch.Tensor | None  # int64 shaped like x, or None: 0 everywhere
    scale: torch.Tensor  # float64, broadcasts against x

    def __post_init__(self) -> None:
        if self.mantissa.dtype != torch.int64:
            raise ConfigError(f"IntegerView mantissa must be int64, got {self.mantissa.dtype}")
        if self.shift is not None and (self.shift.dtype != torch.int64 or self.shift.shape != self.mantissa.shape):
            raise ConfigError("IntegerView shift must be int64 and shaped like the mantissa")
        if self.scale.dtype != torch.float64:
            raise ConfigError(f"IntegerView scale must be float64, got {self.scale.dtype}")

    def dequantize(self) -> torch.Tensor:
        """scale · (mantissa · 2^(-shift)) in float64 (the bracket is exact)."""
        value = self.mantissa.to(torch.float64)
        if self.shift is not None:
            value = torch.ldexp(value, -self.shift)
        return value * self.scale


def dyadic(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``w = M · 2^(-E)`` of finite floats (float32 or float64): odd int64 M, int64 E; (0, 0) for 0."""
    frac, exp = torch.frexp(w.to(torch.float64))  # w = frac · 2^exp, |frac| in [0.5, 1)
    m = (frac * 2.0**53).to(torch.int64)  # exact: at most 53 significant bits
    zeros = torch.frexp((m & -m).to(torch.float64)).exponent - 1  # trailing zero bits of m
    zeros = torch.where(m == 0, 0, zeros)
    shift = torch.where(m == 0, 0, 53 - exp.to(torch.int64) - zeros)
    return m >> zeros, shift


def reject_nan(x: torch.Tensor, fmt: str) -> None:
    """NaN has no integer code: a clear error instead of an undefined int64 cast."""
    if torch.isnan(x).any():
        raise NumericalError(f"{fmt}: NaN (or an input outside the format's domain) has no integer form")
