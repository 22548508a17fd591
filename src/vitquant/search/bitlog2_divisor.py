"""BitLog2 divisor search: the integer s that minimises Σ (x - D(x_int)/s)² over calibration data.

The published code tries every integer s from the largest dequantized integer up to int_max - 1 (up
to 65k candidates). D(x_int) does not depend on s, so with A = Σ x·D and B = Σ D²

    L(s) = Σx² - 2A/s + B/s²,

a convex parabola in u = 1/s with minimum at s* = B/A. Over the integers of [lo, hi] the optimum is
therefore floor(s*) or ceil(s*) after clamping (a convex function is monotone on each side of its
minimum): the search costs two sums instead of 65k passes. Ties go to the smaller s, as the
reference's ascending loop with strict '<'. :func:`brute_force_divisor` is that reference loop, kept
for tests.
"""

from __future__ import annotations

import math

import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.bitlog2 import BitLog2Quantizer, BitLog2Scheme, dequant_float, to_int_domain
from vitquant.search.checks import check_calibration_tensor


def divisor_range(d: torch.Tensor, scheme: BitLog2Scheme) -> tuple[int, int]:
    """Candidate divisors [largest dequantized integer, int_max - 1]; lo is at least 1."""
    return max(int(d.max()), 1), scheme.int_max - 1


def optimal_divisor(a: float, b: float, lo: int, hi: int) -> int:
    """argmin over integers s in [lo, hi] of B/s² - 2A/s (smallest s on ties)."""
    if lo > hi:
        raise ValueError(f"empty divisor range [{lo}, {hi}]")
    if not a > 0:  # all-zero data: every s gives the same loss
        return lo
    s_star = b / a
    candidates = sorted({min(max(math.floor(s_star), lo), hi), min(max(math.ceil(s_star), lo), hi)})

    def loss(s: int) -> float:
        return b / (s * s) - 2.0 * a / s

    return min(candidates, key=lambda s: (loss(s), s))


def row_divisors(rows: torch.Tensor, scheme: BitLog2Scheme) -> torch.Tensor:
    """The optimal divisor of every row of probabilities ``[R, M]`` -> ``[R]`` (float32 integers)."""
    out = []
    for row in rows:  # two dot products per row
        d = dequant_float(to_int_domain(row, scheme), scheme.half)
        lo, hi = divisor_range(d, scheme)
        xf, df = row.to(torch.float64), d.to(torch.float64)
        out.append(optimal_divisor(float(torch.dot(xf, df)), float(torch.dot(df, df)), lo, hi))
    return torch.tensor(out, dtype=torch.float32)


def fit_bitlog2(x: torch.Tensor, scheme: BitLog2Scheme, where: str = "BitLog2 quantizer") -> BitLog2Quantizer:
    """Fit the per-tensor divisor of a :class:`BitLog2Quantizer` to probabilities in [0, 1]."""
    check_calibration_tensor(x, where)
    x = x.detach().to(torch.float32)
    lo_x, hi_x = float(x.min()), float(x.max())
    if lo_x < 0 or hi_x > 1.0 + 1e-6:
        raise NumericalError(f"{where}: BitLog2 needs probabilities in [0, 1], got range [{lo_x}, {hi_x}]")
    return BitLog2Quantizer(scheme, int(row_divisors(x.reshape(1, -1), scheme)[0]))


def brute_force_divisor(x: torch.Tensor, scheme: BitLog2Scheme) -> int:
    """The reference search: every s in [lo, hi], float64 squared error, first minimum."""
    x = x.detach().to(torch.float32)
    d = dequant_float(to_int_domain(x, scheme), scheme.half).reshape(-1).to(torch.float64)
    xf = x.reshape(-1).to(torch.float64)
    lo, hi = divisor_range(d, scheme)
    s = torch.arange(lo, hi + 1, dtype=torch.float64)
    err = ((xf.unsqueeze(0) - d.unsqueeze(0) / s.unsqueeze(1)) ** 2).sum(dim=1)
    return lo + int(torch.argmin(err))
