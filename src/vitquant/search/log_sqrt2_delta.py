"""log√2 quantizer initialisation (RepQ-ViT): Δ is the 0.999, 0.9999 or 0.99999 quantile of the
attention map, whichever gives the lowest mean squared error (first one on ties); per row.

Safe behaviour: a candidate Δ <= 0 is skipped; if all are, Δ = max(x), or 1 for an all-zero row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer
from vitquant.search.checks import check_calibration_tensor
from vitquant.search.percentile_mse import PERCENTILES
from vitquant.search.quantiles import row_quantiles


def search_log_sqrt2_delta(
    rows: torch.Tensor, bits: int, variant: int, percentiles: Sequence[float] = PERCENTILES
) -> torch.Tensor:
    """Δ for every row of non-negative ``rows [R, M]`` -> ``[R]``."""
    candidates = row_quantiles(rows, list(percentiles))  # [K, R]
    best = torch.full((rows.shape[0],), float("inf"))
    delta = torch.zeros(rows.shape[0])
    for cand in candidates:  # three whole-tensor evaluations
        valid = cand > 0
        safe = torch.where(valid, cand, torch.ones_like(cand))
        quantizer = LogSqrt2Quantizer(bits, variant, safe.unsqueeze(1))
        score = torch.mean((quantizer(rows) - rows) ** 2, dim=1)
        better = valid & (score < best)
        best = torch.where(better, score, best)
        delta = torch.where(better, cand, delta)
    unset = ~torch.isfinite(best)
    if unset.any():
        top = rows.amax(dim=1)
        delta = torch.where(unset, torch.where(top > 0, top, torch.ones_like(top)), delta)
    return delta


def fit_log_sqrt2(
    x: torch.Tensor,
    bits: int,
    variant: int,
    percentiles: Sequence[float] = PERCENTILES,
    where: str = "log-sqrt2 quantizer",
) -> LogSqrt2Quantizer:
    """Fit a per-tensor Δ of a :class:`LogSqrt2Quantizer` to non-negative calibration data."""
    check_calibration_tensor(x, where)
    x = x.detach().to(torch.float32)
    if float(x.min()) < 0:
        raise NumericalError(f"{where}: log quantizers need non-negative input, min is {float(x.min())}")
    delta = search_log_sqrt2_delta(x.reshape(1, -1), bits, variant, percentiles)
    return LogSqrt2Quantizer(bits, variant, delta.reshape(()))
