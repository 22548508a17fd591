"""The quantizer contract shared by every number format.

A quantizer is a number format with *fitted* parameters (stored as buffers). It maps a float tensor to
integer codes and back; ``forward`` is the fake-quant (quantize then dequantize) used in simulation.
Finding the parameters is not its job: that lives in :mod:`vitquant.search` (observer/fake-quant split as
in ``torch.ao.quantization``).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from vitquant.errors import ConfigError

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str = "bit width") -> int:
    """Validate a bit width (2..8 inclusive) and return it as ``int``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"{what} must be an integer, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


class Quantizer(nn.Module, abc.ABC):
    """Base class: ``codes(x)`` -> integer codes in ``[0, max_levels)``; ``forward(x)`` -> dequantized x.

    ``max_levels`` is the exact number of distinct values the format can emit (per channel for
    per-channel formats), zero included. Codes are an injective labelling of those values, so
    ``bincount(codes)`` counts how many levels a tensor really used.
    """

    bits: int

    @property
    @abc.abstractmethod
    def max_levels(self) -> int:
        """Number of distinct dequantized values this quantizer can emit (zero included)."""

    @abc.abstractmethod
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer code (int64) of every element, in ``[0, max_levels)``."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize: the dequantized value of every element (same shape and dtype as x)."""

    def levels_used(self, x: torch.Tensor) -> int:
        """How many distinct codes ``x`` uses (at most ``max_levels``)."""
        counts = torch.bincount(self.codes(x).reshape(-1), minlength=self.max_levels)
        return int((counts > 0).sum())
