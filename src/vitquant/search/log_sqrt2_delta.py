"""log√2 quantizer initialisation (RepQ-ViT): Δ is the 0.999, 0.9999 or 0.99999 quantile of the
attention map, whichever gives the lowest mean squared error (first one on ties).

Safe behaviour: a candidate Δ <= 0 is skipped; if all are, Δ = max(x), or 1 for an all-zero map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer
from vitquant.search.checks import check_calibration_tensor
from vitquant.search.percentile_mse import PERCENTILES
from vitquant.search.quantiles import row_quantiles


def fit_log_sqrt2(
    x: torch.Tensor,
    bits: int,
    variant: int,
    percentiles: Sequence[float] = PERCENTILES,
    where: str = "log-sqrt2 quantizer",
) -> LogSqrt2Quantizer:
    """Fit Δ of a :class:`LogSqrt2Quantizer` to non-negative calibration data."""
    check_calibration_tensor(x, where)
    x = x.detach().to(torch.float32)
    if float(x.min()) < 0:
        raise NumericalError(f"{where}: log quantizers need non-negative input, min is {float(x.min())}")
    candidates = row_quantiles(x.reshape(1, -1), list(percentiles))[:, 0]
    best, best_score = None, float("inf")
    for delta in candidates.tolist():  # three whole-tensor evaluations
        if not delta > 0:
            continue
        quantizer = LogSqrt2Quantizer(bits, variant, torch.tensor(delta))
        score = float(torch.mean((quantizer(x) - x) ** 2))
        if score < best_score:
            best, best_score = quantizer, score
    if best is None:
        top = float(x.max())
        best = LogSqrt2Quantizer(bits, variant, torch.tensor(top if top > 0 else 1.0))
    return best
