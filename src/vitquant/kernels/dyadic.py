"""Dyadic numbers: a real scale factor as an integer multiplier and a right shift (HAWQ-V3, I-ViT).

    r ≈ m / 2^s,   requantize(x) = floor((x · m + 2^(s-1)) / 2^s)   (round half up)

with ``m`` an unsigned integer of at most ``bits`` bits (default 16) and ``0 <= s <= max_shift``.
"""

from __future__ import annotations

import math

import torch

from vitquant.kernels.arith import Arith


def dyadic(r: float, bits: int = 16, max_shift: int = 62) -> tuple[int, int]:
    """(m, s) with m / 2^s the closest such number to ``r > 0`` with ``m < 2^bits``."""
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"dyadic approximation needs a finite positive factor, got {r}")
    if r * 2**max_shift < 2 ** (bits - 1):
        raise ValueError(f"factor {r} is too small for a {bits}-bit multiplier with at most {max_shift} shifts")
    # largest s such that round(r * 2^s) still fits in `bits` bits
    s = bits - 1 - math.floor(math.log2(r))
    s = max(0, min(max_shift, s))
    m = round(r * 2**s)
    while m >= 2**bits and s > 0:
        s -= 1
        m = round(r * 2**s)
    if m >= 2**bits:
        raise OverflowError(f"factor {r} needs more than {bits} bits even without a shift")
    return max(m, 1), s


def requantize(x: torch.Tensor, m: int, s: int, arith: Arith) -> torch.Tensor:
    """round(x · m / 2^s) with ties upwards, in integer arithmetic."""
    return arith.round_shift(x * m, s)
