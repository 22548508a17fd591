"""Dyadic approximation m / 2^s of a real factor, and requantization with round-half-up."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from vitquant.kernels.arith import FLOAT, INT
from vitquant.kernels.dyadic import dyadic, requantize

pytestmark = pytest.mark.usefixtures("single_thread")


def _factors(n: int, seed: int, bits: int) -> list[float]:
    """Log-uniform factors over 1e-9 .. 2^(bits-1), plus powers of two and their neighbours."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1e-9), math.log(2.0 ** (bits - 1))
    vals = torch.exp(torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo).tolist()
    for j in range(-20, bits - 1):
        vals += [2.0**j, math.nextafter(2.0**j, 0.0), math.nextafter(2.0**j, math.inf), 1.5 * 2.0**j]
    return vals + [1.0 / 3.0, 0.1, 0.999999, 1.0000001, 2.0**bits - 0.6]


@pytest.mark.parametrize("bits", [8, 12, 16, 24])
def test_relative_error_bound(bits):
    """|m/2^s - r| <= r · 2^-bits for every accepted factor (m keeps `bits` significant bits).

    Measured: the worst ratio error / (r · 2^-bits) over these factors is 0.965 .. 0.993 (tight:
    rounding to the nearest of 2^(bits-1) .. 2^bits - 1 loses at most half a unit).
    """
    worst = Fraction(0)
    for r in _factors(3000, seed=bits, bits=bits):
        m, s = dyadic(r, bits=bits)
        assert 1 <= m < 2**bits and 0 <= s <= 62
        err = abs(Fraction(m, 2**s) - Fraction(r))
        worst = max(worst, err / (Fraction(r) * Fraction(1, 2**bits)))
    assert worst <= 1, float(worst)


def test_large_and_tiny_factors():
    # r >= 2^(bits-1): no shift, m = round(r)
    assert dyadic(40000.4, bits=16) == (40000, 0)
    assert dyadic(1.0, bits=16) == (2**15, 15)
    # the smallest factor the shift cap allows still gets a full-width multiplier
    m, s = dyadic(2.0**-47, bits=16)
    assert (m, s) == (2**15, 62)
    with pytest.raises(ValueError):
        dyadic(1e-20, bits=16)
    with pytest.raises(OverflowError):
        dyadic(2.0**17, bits=16)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            dyadic(bad)


def _round_half_up(num: int, den: int) -> int:
    return math.floor(Fraction(num, den) + Fraction(1, 2))


@pytest.mark.parametrize("r", [0.37, 1.0 / 3.0, 2.5e-4, 0.999, 3.7, 1.0])
def test_requantize_rounds_half_up_in_both_backends(r):
    m, s = dyadic(r, bits=16)
    x = list(range(-3000, 3001)) + [2**31 - 1, -(2**31), 2**35 - 7, -(2**35) + 3]  # |x · m| < 2^52
    expected = [_round_half_up(v * m, 2**s) for v in x]
    got_int = requantize(INT.tensor(torch.tensor(x)), m, s, INT)
    got_float = requantize(FLOAT.tensor(torch.tensor(x)), m, s, FLOAT)
    assert got_int.tolist() == expected
    assert torch.equal(got_int.double(), got_float)


def test_requantize_ties_and_no_shift():
    # m / 2^s = 1/2: exact ties go up, also for negatives (-2.5 -> -2)
    x = torch.tensor([-5, -3, -1, 1, 3, 5])
    for arith in (INT, FLOAT):
        assert requantize(arith.tensor(x), 1, 1, arith).long().tolist() == [-2, -1, 0, 1, 2, 3]
        assert requantize(arith.tensor(x), 3, 0, arith).long().tolist() == [-15, -9, -3, 3, 9, 15]
