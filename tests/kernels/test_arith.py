"""The two arithmetic backends: integer ops agree with Python's exact integers, and with each other
up to the documented 2^52 limit."""

from __future__ import annotations

import pytest
import torch

from vitquant.kernels.arith import BACKENDS, EXACT_LIMIT, FLOAT, INT, Arith, check_exact

pytestmark = pytest.mark.usefixtures("single_thread")

BOTH = [INT, FLOAT]


def _ints(gen: torch.Generator, n: int, bits: int) -> list[int]:
    """Signed integers with |v| < 2^bits, log-uniform magnitudes, plus edge values."""
    mags = torch.exp2(torch.rand(n, generator=gen, dtype=torch.float64) * bits).floor().long()
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1, 1)
    vals = (mags * signs).clamp(-(2**bits) + 1, 2**bits - 1).tolist()
    return vals + [0, 1, -1, 2, -2, 2**bits - 1, -(2**bits) + 1]


def _run(arith: Arith, values: list[int]) -> torch.Tensor:
    return arith.tensor(torch.tensor(values, dtype=torch.int64))


def test_registry_and_dtypes():
    assert BACKENDS == {"int": INT, "float": FLOAT}
    assert INT.is_integer and INT.dtype == torch.int64
    assert not FLOAT.is_integer and FLOAT.dtype == torch.float64


def test_tensor_converts_and_rejects_fractions():
    assert INT.tensor(torch.tensor([1.0, -3.0])).dtype == torch.int64
    assert torch.equal(INT.tensor(torch.tensor([1.0, -3.0])), torch.tensor([1, -3]))
    assert torch.equal(FLOAT.tensor(torch.tensor([2, -5])), torch.tensor([2.0, -5.0], dtype=torch.float64))
    assert INT.tensor(7).item() == 7
    with pytest.raises(ValueError):
        INT.tensor(torch.tensor([0.5]))


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_floor_div_matches_python(arith):
    gen = torch.Generator().manual_seed(1)
    a = _ints(gen, 3000, 51)
    b = [v if v != 0 else 1 for v in _ints(gen, 3000, 26)]
    got = arith.floor_div(_run(arith, a), _run(arith, b))
    assert got.tolist() == [x // y for x, y in zip(a, b)]
    # a scalar divisor, negative numerators (floor, not truncation)
    assert arith.floor_div(_run(arith, [-7, 7, -1, 0]), 2).tolist() == [-4, 3, -1, 0]


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_floor_div_exact_near_limit(arith):
    """Quotients just below an integer, with numerator and divisor close to 2^52."""
    big = EXACT_LIMIT - 1
    a = [big, big - 1, -big, (2**26 + 1) * (2**26 - 1) - 1, (2**25 - 3) * (2**26 + 5) - 1, -(3 * 2**50) - 1]
    b = [big, 3, 7, 2**26 - 1, 2**26 + 5, 3]
    got = arith.floor_div(_run(arith, a), _run(arith, b))
    assert got.tolist() == [x // y for x, y in zip(a, b)]


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_shifts_match_python(arith):
    gen = torch.Generator().manual_seed(2)
    a = _ints(gen, 2000, 40)
    t = _run(arith, a)
    for k in (0, 1, 3, 4, 11, 39, 45):
        assert arith.shift_right(t, k).tolist() == [v >> k for v in a], k
    for k in (0, 1, 5, 11):
        assert arith.shift_left(t, k).tolist() == [v << k for v in a], k
    # per-element shift amounts (a tensor)
    ks = [i % 20 for i in range(len(a))]
    assert arith.shift_right(t, _run(arith, ks)).tolist() == [v >> k for v, k in zip(a, ks)]
    small = [v >> 30 for v in a]
    assert arith.shift_left(_run(arith, small), _run(arith, ks)).tolist() == [v << k for v, k in zip(small, ks)]


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_round_shift_ties_upwards(arith):
    vals = list(range(-40, 41))
    t = _run(arith, vals)
    assert arith.round_shift(t, 0).tolist() == vals
    for k in (1, 2, 3):
        # round half up: floor(v / 2^k + 1/2), e.g. -2.5 -> -2, 2.5 -> 3
        expected = [(2 * v + 2**k) // 2 ** (k + 1) for v in vals]
        assert arith.round_shift(t, k).tolist() == expected
    assert arith.round_shift(_run(arith, [-5, 5, -3, 3]), 1).tolist() == [-2, 3, -1, 2]


def test_backends_agree_on_random_mixed_expression():
    """A chain of every op on values below 2^52 gives identical integers in both backends."""
    gen = torch.Generator().manual_seed(3)
    a = torch.tensor(_ints(gen, 5000, 30))
    b = torch.tensor(_ints(gen, 5000, 20)[: len(a)]).abs() + 1
    out = {}
    for arith in BOTH:
        x, y = arith.tensor(a), arith.tensor(b)
        z = arith.floor_div(x * y + 12345, y + 3)  # |x * y| < 2^50
        z = arith.shift_right(z, 3) - arith.shift_left(arith.floor_div(z, 7), 2)
        z = arith.round_shift(z * 1000, 9) + torch.where(z > 0, z, -z)
        out[arith.name] = z
    assert torch.equal(out["int"].double(), out["float"])


def test_check_exact():
    check_exact(torch.tensor([EXACT_LIMIT - 1, -(EXACT_LIMIT - 1)]), "ok")
    check_exact(torch.zeros(0), "empty")
    with pytest.raises(OverflowError, match="2\\^52"):
        check_exact(torch.tensor([0, -EXACT_LIMIT]), "too big")
    with pytest.raises(OverflowError):
        check_exact(torch.tensor([float(EXACT_LIMIT)], dtype=torch.float64), "too big")
