"""Serializable quantizer state: a fitted quantizer as plain data, rebuilt by its registered kind.

``QuantizerState(kind, meta, tensors)``: ``kind`` names a quantizer class (:func:`register_quantizer`),
``meta`` its plain options (JSON-able: bits, variant, half), ``tensors`` its fitted parameters (reals
float32, integers int64). :func:`quantizer_from_state` checks names, types and dtypes, then calls the
class's constructor, which checks the values; nothing in the data is imported or executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vitquant.errors import ConfigError

if TYPE_CHECKING:
    from vitquant.quantizers.base import Quantizer

__all__ = ["QuantizerState", "quantizer_from_state", "quantizer_kinds", "register_quantizer"]


@dataclass(frozen=True, eq=False)
class QuantizerState:
    """A fitted quantizer as data: registry ``kind``, JSON-able ``meta``, fitted ``tensors``."""

    kind: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


_QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: :func:`quantizer_from_state` rebuilds states of ``cls.kind`` with ``cls``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} has no kind")
    if _QUANTIZERS.get(cls.kind, cls) is not cls:
        raise TypeError(f"quantizer kind {cls.kind!r} is already registered by {_QUANTIZERS[cls.kind].__name__}")
    _QUANTIZERS[cls.kind] = cls
    return cls


def quantizer_kinds() -> list[str]:
    return sorted(_QUANTIZERS)


def _check_names(where: str, given: object, expected: Mapping[str, object]) -> Mapping[str, Any]:
    """``given`` must be a dict with exactly the keys of ``expected``."""
    if not isinstance(given, dict):
        raise ConfigError(f"{where} must be a dict, got {type(given).__name__}")
    missing = sorted(set(expected) - set(given))
    extra = sorted(map(repr, set(given) - set(expected)))
    if missing or extra:
        raise ConfigError(
            f"{where}: missing {missing}, unexpected [{', '.join(extra)}]; expected {sorted(expected)}"
        )
    return given


def _checked_meta(kind: str, meta: object, types: Mapping[str, type]) -> dict[str, Any]:
    meta = _check_names(f"{kind} state meta", meta, types)
    for name, expected in types.items():
        if type(meta[name]) is not expected:  # exact: True is not an int bit width, 4.0 is not 4
            raise ConfigError(
                f"{kind} state meta {name!r} must be {expected.__name__}, got {meta[name]!r}"
            )
    return dict(meta)


def _checked_tensors(kind: str, tensors: object, dtypes: Mapping[str, torch.dtype]) -> dict[str, torch.Tensor]:
    tensors = _check_names(f"{kind} state tensors", tensors, dtypes)
    for name, dtype in dtypes.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{kind} state tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise ConfigError(f"{kind} state tensor {name!r} must be {dtype}, got {t.dtype}")
        if t.numel() == 0:
            raise ConfigError(f"{kind} state tensor {name!r} is empty")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ConfigError(f"{kind} state tensor {name!r} has NaN or inf")
    try:
        torch.broadcast_shapes(*(tensors[name].shape for name in dtypes))
    except RuntimeError as err:
        shapes = {name: tuple(tensors[name].shape) for name in dtypes}
        raise ConfigError(f"{kind} state tensors do not broadcast together: {shapes}") from err
    return {name: tensors[name].detach() for name in dtypes}


def quantizer_from_state(state: QuantizerState) -> Quantizer:
    """Rebuild the quantizer ``state`` describes (inverse of :meth:`Quantizer.state`), validating it."""
    if not isinstance(state, QuantizerState):
        raise ConfigError(f"expected a QuantizerState, got {type(state).__name__}")
    cls = _QUANTIZERS.get(state.kind) if isinstance(state.kind, str) else None
    if cls is None:
        raise ConfigError(f"unknown quantizer kind {state.kind!r}; known: {', '.join(quantizer_kinds())}")
    meta = _checked_meta(state.kind, state.meta, cls.meta_types)
    tensors = _checked_tensors(state.kind, state.tensors, cls.tensor_dtypes)
    try:
        return cls.from_state(meta, tensors)
    except ConfigError as err:
        raise ConfigError(f"invalid {state.kind} quantizer state: {err}") from err
