"""Uniform quantizer initialisation by percentile clipping and squared error (RepQ-ViT).

For each row (the whole tensor, or one channel) try the clipping ranges
``[quantile(1-p), quantile(p)]`` for p in 0.999, 0.9999, 0.99999, with

    Δ = (max - min) / (2^b - 1),   z = round(-min / Δ)

and keep the one with the lowest mean squared error (first one on ties). All rows and candidates are
evaluated in one broadcast tensor operation.

Degenerate rows (documented safe behaviour, RepQ-ViT divides by zero here):

- a range that overflows float32 is formed in double, and Δ is at least the smallest normal float32 (so 1/Δ is finite);
- a candidate with zero range, or whose error overflows, is never chosen; if no candidate is usable the
  full observed range is used;
- a constant row (min == max == v) gets Δ = |v| and z = 0 (v > 0) or 1 (v < 0), so v is a grid point
  and is reproduced exactly; an all-zero row gets Δ = 1, z = 0 (so does a subnormal constant, which
  then quantizes to 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vitquant.quantizers.base import check_bits
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.search.checks import check_calibration_tensor
from vitquant.search.quantiles import row_quantiles

PERCENTILES: tuple[float, ...] = (0.999, 0.9999, 0.99999)
_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32: 1/Δ stays finite


def channel_rows(x: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """``x`` as float32 rows ``[C, M]``, one per channel along ``channel_dim`` (one row if None)."""
    x = x.detach().to(torch.float32)
    if channel_dim is None:
        return x.reshape(1, -1)
    return x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)


def _param_shape(x: torch.Tensor, channel_dim: int | None) -> tuple[int, ...]:
    """Shape that broadcasts a per-row parameter back onto x (trailing alignment)."""
    if channel_dim is None:
        return ()
    d = channel_dim % x.dim()
    return (x.shape[d],) + (1,) * (x.dim() - 1 - d)


def _mse_per_row(rows: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Mean squared fake-quant error of every row for every candidate: ``[K, R]``. One row (a per-tensor
    point) is scored candidate by candidate with scalar bounds: 3-4x faster than the ``[K, 1, M]``
    broadcast on a few million elements; the mean may then sum in another order (float32 rounding)."""
    if rows.shape[0] == 1:
        out = torch.empty_like(delta)
        for k in range(delta.shape[0]):
            z = float(zero[k, 0])
            q = rows[0] * (1.0 / delta[k, 0])
            q.round_().clamp_(-z, qmax - z).mul_(delta[k, 0]).sub_(rows[0])
            out[k, 0] = q.square_().mean()
        return out
    inv = (1.0 / delta).unsqueeze(-1)
    z = zero.unsqueeze(-1)
    q = rows.unsqueeze(0) * inv
    # clamp(round(.) + z, 0, qmax) - z == clamp(round(.), -z, qmax - z): exact on float integers
    q.round_().clamp_(-z, qmax - z).mul_(delta.unsqueeze(-1)).sub_(rows.unsqueeze(0))
    return q.square_().mean(dim=-1)


def _range_to_step(lower: torch.Tensor, upper: torch.Tensor, qmax: int) -> torch.Tensor:
    """Δ = (max - min) / qmax in float32 (as RepQ-ViT), in double only where float32 overflows; floored
    at the smallest normal float32."""
    delta = (upper - lower) / qmax
    overflow = torch.isinf(delta) & torch.isfinite(upper) & torch.isfinite(lower)
    if overflow.any():
        delta = torch.where(overflow, ((upper.double() - lower.double()) / qmax).to(torch.float32), delta)
    return torch.where(delta > 0, delta.clamp(min=_TINY), delta)


def search_uniform_params(
    rows: torch.Tensor, bits: int, percentiles: Sequence[float] = PERCENTILES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (Δ, z) for a ``[R, M]`` tensor by the percentile/MSE rule; returns two ``[R]`` tensors."""
    qmax = 2 ** check_bits(bits) - 1
    upper = row_quantiles(rows, list(percentiles))
    lower = row_quantiles(rows, [1.0 - p for p in percentiles])
    delta = _range_to_step(lower, upper, qmax)
    valid = torch.isfinite(delta) & (delta > 0)
    safe_delta = torch.where(valid, delta, torch.ones_like(delta))
    zero = (-lower / safe_delta).round()
    score = _mse_per_row(rows, safe_delta, zero, qmax)
    score = torch.where(valid & torch.isfinite(score), score, torch.full_like(score, float("inf")))
    best = score.argmin(dim=0)  # first minimum, as RepQ-ViT's strict '<' loop
    pick = best.unsqueeze(0)
    delta_out = safe_delta.gather(0, pick)[0]
    zero_out = zero.gather(0, pick)[0]

    fallback = torch.isinf(score).all(dim=0)  # no usable candidate (zero range or overflow)
    if fallback.any():
        lo = rows[fallback].amin(dim=1)
        hi = rows[fallback].amax(dim=1)
        constant = hi == lo
        lo = torch.where(constant, torch.clamp(lo, max=0.0), lo)
        hi = torch.where(constant, torch.clamp(hi, min=0.0), hi)
        # a constant row v gets Δ = |v| and z = 0 (v > 0) or 1 (v < 0): v itself is a grid point
        d = torch.where(constant, hi - lo, _range_to_step(lo, hi, qmax))
        d = torch.where(d >= _TINY, d, torch.ones_like(d))  # all-zero (or subnormal) constant: Δ = 1
        delta_out[fallback] = d
        zero_out[fallback] = (-lo / d).round()
    return delta_out, zero_out


def fit_uniform(
    x: torch.Tensor,
    bits: int,
    channel_dim: int | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    where: str = "uniform quantizer",
) -> UniformQuantizer:
    """Fit a per-tensor (``channel_dim=None``) or per-channel uniform quantizer to calibration data."""
    check_calibration_tensor(x, where)
    delta, zero = search_uniform_params(channel_rows(x, channel_dim), bits, percentiles)
    shape = _param_shape(x, channel_dim)
    return UniformQuantizer(bits, delta.reshape(shape), zero.reshape(shape))
