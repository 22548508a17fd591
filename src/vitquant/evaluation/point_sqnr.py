"""Per-layer SQNR of every quantization point of a calibrated model, and the inputs it saw.

For a weight: SQNR = 10·log10(Σ w² / Σ (w − Q(w))²) over the layer's weight.
For an activation point: the same over every value the point quantized while the quantized model ran
on some images (the point's own input in the quantized model, so it measures that point's rounding and
clipping, not the error accumulated upstream). 10·log10 of power ratios, the usual signal-to-
quantization-noise ratio in dB; ``None`` where the error is exactly zero (infinite SQNR).

:func:`capture_inputs` records what chosen points see in the *float* mode of the model (the
full-precision function), the data the compare figures histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vitquant.nn.hooks import run_hooked
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import Mode, QuantPoint, quant_points

__all__ = ["Captured", "PointSQNR", "capture_inputs", "float_mode", "point_sqnr", "sqnr_db"]


@dataclass(frozen=True)
class PointSQNR:
    """One point's SQNR (dB) over ``values`` quantized values."""

    name: str
    role: str
    quantizer: str
    sqnr_db: float | None
    values: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def sqnr_db(signal: float, noise: float) -> float | None:
    """``10·log10(signal / noise)``; None for zero noise, -inf never (zero signal gives None too)."""
    if noise <= 0.0 or signal <= 0.0:
        return None
    return 10.0 * math.log10(signal / noise)


class _Sums:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.values = 0

    def add(self, x: torch.Tensor, q: torch.Tensor) -> None:
        x64 = x.detach().double()
        self.signal += float((x64 * x64).sum())
        self.noise += float(((x64 - q.detach().double()) ** 2).sum())
        self.values += x.numel()


def _quantizer_name(module: nn.Module) -> str:
    return type(module).__name__


@contextmanager
def float_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in its full-precision mode inside the block; every mode is restored after."""
    saved = [(m, m.mode) for m in model.modules() if isinstance(getattr(m, "mode", None), Mode)]
    try:
        for module, _ in saved:
            module.mode = Mode.FLOAT
        yield
    finally:
        for module, mode in saved:
            module.mode = mode


def point_sqnr(qmodel: nn.Module, images: Sequence[torch.Tensor]) -> list[PointSQNR]:
    """SQNR of every quantized weight, then of every fitted activation point, in model order, while
    ``qmodel`` runs on the batches ``images``."""
    rows: list[PointSQNR] = []
    for name, module in qmodel.named_modules():
        if isinstance(module, WeightQuantMixin) and module.weight_quantizer is not None:
            sums = _Sums()
            sums.add(module.weight, module.weight_quantizer(module.weight.detach()))
            rows.append(PointSQNR(f"{name}.weight", "weight", _quantizer_name(module.weight_quantizer),
                                  sqnr_db(sums.signal, sums.noise), sums.values))
    points = [(name, p) for name, p in quant_points(qmodel) if p.quantizer is not None and p.mode is Mode.QUANTIZE]
    sums_of = {name: _Sums() for name, _ in points}
    run_hooked(qmodel, images, [(p, lambda _m, args, out, s=sums_of[name]: s.add(args[0], out)) for name, p in points])
    for name, p in points:
        s = sums_of[name]
        rows.append(PointSQNR(name, p.role, _quantizer_name(p.quantizer), sqnr_db(s.signal, s.noise), s.values))
    return rows


@dataclass(frozen=True)
class Captured:
    """What one point saw: the shape of its first input, and every value it saw, flattened."""

    shape: tuple[int, ...]
    values: torch.Tensor


def capture_inputs(model: nn.Module, names: Sequence[str], images: Sequence[torch.Tensor]) -> dict[str, Captured]:
    """The inputs of the named quantization points while ``model`` runs in float mode on ``images``
    (several calls of one point, e.g. both operands of a residual add, are pooled)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), QuantPoint)]
    if missing:
        raise KeyError(f"not quantization points of this model: {', '.join(missing)}")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with float_mode(model):
        run_hooked(model, images, [(modules[n], lambda _m, args, _out, store=seen[n]: store.append(args[0].detach().clone()))
                                   for n in names])
    return {n: Captured(tuple(seen[n][0].shape), torch.cat([t.reshape(-1) for t in seen[n]])) for n in names if seen[n]}
