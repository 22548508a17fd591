"""The grid of a fitted quantizer: the values it emits for inputs swept over a range.

The compare figures draw it over the histogram of the data it quantizes (the attention map, the
post-GELU activation). The grid is read off the quantizer itself, never recomputed from its
parameters, so the figure shows exactly what the simulation does: the sweep is run through
``quantizer.forward`` on a probe tensor that has one row per channel or head (so per-row formats
broadcast as they do on real data), and the distinct outputs of each row are its grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer


@dataclass(frozen=True)
class Grid:
    """The distinct values of row 0, and how many different grids the ``rows`` rows have."""

    values: list[float]
    rows: int
    distinct: int

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "rows": self.rows, "distinct": self.distinct}


def log_sweep(low: float = 1e-12, high: float = 1.0, points: int = 8192) -> torch.Tensor:
    """``0`` and ``points`` values log-spaced over ``[low, high]`` (an attention map's range)."""
    if not 0.0 < low < high:
        raise ConfigError(f"a log sweep needs 0 < low < high, got {low}, {high}")
    return torch.cat([torch.zeros(1), torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), points)])


def linear_sweep(low: float, high: float, points: int = 8192) -> torch.Tensor:
    """``points`` evenly spaced values over ``[low, high]``."""
    if not low < high:
        raise ConfigError(f"a linear sweep needs low < high, got {low}, {high}")
    return torch.linspace(low, high, points)


def probe(shape: torch.Size | tuple[int, ...], axis: int | None, sweep: torch.Tensor) -> torch.Tensor:
    """A tensor of ``len(shape)`` dims: ``shape[axis]`` rows along ``axis`` (1 if None), the sweep along
    the last other axis, size 1 elsewhere; every row holds the same sweep."""
    ndim = len(shape)
    if ndim < 2:
        raise ConfigError(f"a grid probe needs a tensor of at least 2 dims, got shape {tuple(shape)}")
    if axis is not None and not -ndim <= axis < ndim:
        raise ConfigError(f"a grid probe's row axis {axis} is out of range for shape {tuple(shape)}")
    row_axis = None if axis is None else axis % ndim
    sweep_axis = ndim - 1 if row_axis != ndim - 1 else ndim - 2
    size = [1] * ndim
    size[sweep_axis] = sweep.numel()
    if row_axis is not None:
        size[row_axis] = shape[row_axis]
    view = [1] * ndim
    view[sweep_axis] = sweep.numel()
    return sweep.to(torch.float32).reshape(view).expand(size).contiguous()


def grid_of(quantizer: Quantizer, shape: torch.Size | tuple[int, ...], axis: int | None, sweep: torch.Tensor) -> Grid:
    """The grid ``quantizer`` emits on ``sweep``, for data of ``shape`` whose rows lie along ``axis``
    (non-finite outputs, from sweep values outside the format's domain, are left out)."""
    x = probe(shape, axis, sweep)
    ndim = len(shape)
    with torch.no_grad():
        out = quantizer(x)
    row_axis = 0 if axis is None else axis % ndim
    rows = out.movedim(row_axis, 0).reshape(out.shape[row_axis], -1)
    rows = [torch.unique(r[torch.isfinite(r)]) for r in rows]  # NaN: a sweep value outside the format's domain
    grids = {tuple(r.tolist()) for r in rows}
    first = rows[0].tolist()
    return Grid(values=[float(v) for v in first], rows=len(rows), distinct=len(grids))
