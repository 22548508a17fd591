"""Exact tail quantiles without sorting: ``topk`` on a pre-filtered tail instead of ``torch.quantile``.

``torch.quantile`` sorts the whole input and refuses tensors above 2^24 elements; the percentile
searches of RepQ-ViT only need the extreme 0.1 %. :func:`row_quantiles` returns the same values as
``torch.quantile(x, q, dim=-1)`` (linear interpolation; ranks in double, as torch forms them) from the
``k`` largest or smallest elements of each row.

For long single rows the tail is pre-filtered: a threshold t is read off a strided subsample, and if
at least k elements exceed t, the k largest of those are the k largest of the row (anything <= t
ranks below k of them). Otherwise it falls back to ``topk`` on the whole row. Exact either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# rows shorter than this go straight to topk, where the prefilter's quantile and boolean gather cost
# about as much as the topk (measured on 2 cores, torch 2.14, k = 0.1 %: 262k elements 0.56 ms either
# way; 1.2M 3.9 ms by topk, 1.4 ms prefiltered; 3.7M 35 ms against 3.8 ms)
_PREFILTER_MIN = 1 << 19
_SUBSAMPLE = 1 << 14


def _tail(row: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """The k largest (or smallest) values of a 1-D tensor, sorted from the extreme inwards."""
    m = row.numel()
    if m >= _PREFILTER_MIN and k * 8 < m:
        sample = row[:: max(1, m // _SUBSAMPLE)]
        # keep ~4x the expected tail so the count check almost never fails
        frac = min(1.0, 4.0 * k / m + 32.0 / sample.numel())
        t = torch.quantile(sample, 1.0 - frac if largest else frac)
        tail = row[row > t] if largest else row[row < t]
        if tail.numel() >= k:
            row = tail
    return torch.topk(row, k, largest=largest, sorted=True).values


def _tails(x: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    if x.shape[0] == 1:
        return _tail(x[0], k, largest).unsqueeze(0)
    return torch.topk(x, k, dim=1, largest=largest, sorted=True).values


def row_quantiles(x: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Quantiles of every row of a 2-D tensor ``[R, M]`` -> ``[len(qs), R]``."""
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"row_quantiles needs a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must be in [0, 1], got {list(qs)}")
    m = x.shape[1]
    q_t = torch.tensor(list(qs), dtype=x.dtype)  # ranks and weights stay on the CPU (scalars)
    ranks = q_t.to(torch.float64) * (m - 1)  # torch.quantile forms ranks in double
    below = ranks.to(torch.int64)
    above = ranks.ceil().to(torch.int64)  # == below at whole ranks, as torch.quantile
    weights = (ranks - below.to(torch.float64)).to(x.dtype)

    upper = q_t >= 0.5
    out = torch.empty(len(qs), x.shape[0], dtype=x.dtype, device=x.device)
    if upper.any():
        # ascending index i is descending index m-1-i of the top-k
        top = _tails(x, int(m - below[upper].min()), largest=True)
        for j in torch.nonzero(upper).flatten().tolist():
            lo = top[:, m - 1 - int(below[j])]
            hi = top[:, m - 1 - int(above[j])]
            out[j] = torch.lerp(lo, hi, weights[j])
    if (~upper).any():
        bottom = _tails(x, int(above[~upper].max()) + 1, largest=False)
        for j in torch.nonzero(~upper).flatten().tolist():
            out[j] = torch.lerp(bottom[:, int(below[j])], bottom[:, int(above[j])], weights[j])
    return out
