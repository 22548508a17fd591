"""A fitted quantizer's state as a short plain-data summary, for reports and ``vitquant inspect``.

``summarize_state(state)`` -> ``{"kind", "meta", "tensors"}``: ``meta`` as the state holds it, every
tensor as one number when it has one element, else ``{"shape", "min", "max", "mean"}``. Integer
tensors give ints (their mean a float); floats keep :data:`SIGNIFICANT` significant digits; NaN and
±inf become None, so the summary is valid JSON (``json.dumps(..., allow_nan=False)`` accepts it).
Built from the state alone, the same way for every quantizer kind.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vitquant.quantizers.state import QuantizerState

__all__ = ["SIGNIFICANT", "summarize_number", "summarize_state", "summarize_tensor", "tensor_stats"]

SIGNIFICANT = 6


def summarize_number(value: float | int | bool) -> float | int | bool | None:
    """An int or bool as it is; a float to :data:`SIGNIFICANT` significant digits, None when not finite."""
    if isinstance(value, (bool, int)):
        return value
    value = float(value)
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else None


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """``{"shape", "min", "max", "mean"}`` of ``t`` (min/max ints for an integer tensor; all None when
    it is empty); a float tensor's statistics skip nothing, so one NaN makes them None."""
    stats: dict[str, Any] = {"shape": list(t.shape), "min": None, "max": None, "mean": None}
    if t.numel() == 0:
        return stats
    flat = t.detach().reshape(-1)
    integer = not (flat.is_floating_point() or flat.is_complex())
    low, high = flat.min().item(), flat.max().item()
    stats["min"] = summarize_number(int(low) if integer else float(low))
    stats["max"] = summarize_number(int(high) if integer else float(high))
    stats["mean"] = summarize_number(float(flat.to(torch.float64).mean()))
    return stats


def summarize_tensor(t: torch.Tensor) -> float | int | bool | dict[str, Any] | None:
    """One number when ``t`` has one element, else :func:`tensor_stats`."""
    if t.numel() == 1:
        value = t.detach().reshape(()).item()
        return summarize_number(value if isinstance(value, (bool, int)) else float(value))
    return tensor_stats(t)


def summarize_state(state: QuantizerState) -> dict[str, Any]:
    """``{"kind", "meta", "tensors"}``: the state's kind and meta, and a summary of each tensor."""
    return {
        "kind": state.kind,
        "meta": dict(state.meta),
        "tensors": {name: summarize_tensor(t) for name, t in state.tensors.items()},
    }
