"""The quantizer contract shared by every number format.

A quantizer is a number format with *fitted* parameters (stored as buffers). It maps a float tensor to
integer codes and back; ``forward`` is the fake-quant (quantize then dequantize) used in simulation,
``to_integer`` the same values in integer form (:class:`~vitquant.quantizers.integer_view.IntegerView`),
``state`` its parameters as plain data (:mod:`vitquant.quantizers.state`).
Finding the parameters is not its job: that lives in :mod:`vitquant.search` (observer/fake-quant split as
in ``torch.ao.quantization``).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.quantizers.state import QuantizerState

if TYPE_CHECKING:
    from vitquant.quantizers.integer_view import IntegerView

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str = "bit width", low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    """Validate a bit width (``low``..``high`` inclusive, default 2..8) and return it as ``int``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"{what} must be an integer, got {bits!r}")
    if not low <= bits <= high:
        raise ConfigError(f"{what} must be between {low} and {high}, got {bits}")
    return bits


class Quantizer(nn.Module, abc.ABC):
    """Base class: ``codes(x)`` -> integer codes in ``[0, max_levels)``; ``forward(x)`` -> dequantized x.

    ``max_levels`` is the exact number of distinct values the format can emit (per channel for
    per-channel formats), zero included. Codes are an injective labelling of those values, so
    ``bincount(codes)`` counts how many levels a tensor really used.
    """

    bits: int
    kind: ClassVar[str] = ""  # registry name of its state (see :func:`register_quantizer`)
    integer_form: ClassVar[bool] = True  # whether :meth:`to_integer` exists (else it raises NotIntegerError)
    #: whether block reconstruction trains it (:mod:`vitquant.quantizers.trainable`); False: it stays frozen
    #: and passes gradients straight through
    trainable: ClassVar[bool] = False
    meta_types: ClassVar[dict[str, type]] = {"bits": int}  # plain options in the state, by exact type
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {}  # fitted buffers in the state, by dtype

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

    @abc.abstractmethod
    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """``forward(x)`` as scale · mantissa · 2^(-shift): ``to_integer(x).dequantize().to(x.dtype)``
        equals ``forward(x)`` bit for bit for float32 x, but for the sign of zero (an integer 0 is +0.0
        where forward may give -0.0). NaN input raises NumericalError; a format without an integer form
        (``integer_form`` False) raises NotIntegerError."""

    def state_meta(self) -> dict[str, Any]:
        """The plain options of :meth:`state` (default: the attributes named in ``meta_types``)."""
        return {name: getattr(self, name) for name in self.meta_types}

    def state(self) -> QuantizerState:
        """The fitted quantizer as plain data; :func:`~vitquant.quantizers.state.quantizer_from_state`
        rebuilds an equal quantizer (same forward, codes, levels and repr)."""
        dtypes = self.tensor_dtypes
        tensors = {name: getattr(self, name).detach().to(dtype).clone() for name, dtype in dtypes.items()}
        return QuantizerState(self.kind, self.state_meta(), tensors)

    @classmethod
    def from_state(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Quantizer:
        """The quantizer from checked meta and tensors (default: constructor keywords of the same names)."""
        return cls(**meta, **tensors)

    def levels_used(self, x: torch.Tensor) -> int:
        """How many distinct codes ``x`` uses (at most ``max_levels``)."""
        counts = torch.bincount(self.codes(x).reshape(-1), minlength=self.max_levels)
        return int((counts > 0).sum())
