"""Histograms as plain data (bin edges and counts), so the figures can be redrawn from the results JSON.

The attention map is histogrammed on log-spaced bins (its values span ten decades); values below the
first edge, exact zeros included, are counted apart, since a log axis cannot show them.
"""

from __future__ import annotations

from typing import Any

import torch

LOG_LOW = 1e-10  # first edge of the attention histogram
BINS = 80


def log_histogram(values: torch.Tensor, low: float = LOG_LOW, high: float = 1.0, bins: int = BINS) -> dict[str, Any]:
    """Counts of ``values`` in ``bins`` log-spaced bins over ``[low, high]``, plus ``below`` (< low,
    zeros included) and ``zeros``."""
    v = values.detach().reshape(-1).double()
    edges = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), bins + 1, dtype=torch.float64)
    inside = v[(v >= low) & (v <= high)]
    counts = torch.histogram(inside, bins=edges).hist if inside.numel() else torch.zeros(bins, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()], "scale": "log",
            "below": int((v < low).sum()), "zeros": int((v == 0).sum()), "above": int((v > high).sum()),
            "values": int(v.numel())}


def histogram(values: torch.Tensor, bins: int = BINS) -> dict[str, Any]:
    """Counts of ``values`` in ``bins`` equal bins from their minimum to their maximum."""
    v = values.detach().reshape(-1).double()
    low, high = float(v.min()), float(v.max())
    if high <= low:
        high = low + 1.0
    hist = torch.histogram(v, bins=bins, range=(low, high))
    return {"edges": hist.bin_edges.tolist(), "counts": [int(c) for c in hist.hist.tolist()], "scale": "linear",
            "below": 0, "zeros": int((v == 0).sum()), "above": 0, "values": int(v.numel())}
