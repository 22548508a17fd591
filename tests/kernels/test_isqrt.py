"""Integer square root: exactly math.isqrt on every v < 2^52, in both backends."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.kernels.arith import EXACT_LIMIT, FLOAT, INT
from vitquant.kernels.isqrt import MAX_BITS, NEWTON_ITERATIONS, bit_length, isqrt

pytestmark = pytest.mark.usefixtures("single_thread")

BOTH = [INT, FLOAT]


def _edge_values() -> list[int]:
    """0, perfect squares and their neighbours at every bit length, powers of two, and 2^52 - 1."""
    vals = {0, 1, 2, 3, EXACT_LIMIT - 1, EXACT_LIMIT - 2}
    for j in range(1, 27):
        for r in (2**j - 1, 2**j, 2**j + 1):
            for v in (r * r - 1, r * r, r * r + 1):
                if 0 <= v < EXACT_LIMIT:
                    vals.add(v)
    for j in range(MAX_BITS):
        vals.update({2**j - 1, 2**j, 2**j + 1})
    r = math.isqrt(EXACT_LIMIT - 1)  # largest root in range
    vals.update({r * r - 1, r * r, r * r + 2 * r})
    return sorted(v for v in vals if 0 <= v < EXACT_LIMIT)


def _random_52bit(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.randint(0, 2**52, (n,), generator=gen, dtype=torch.int64)
    bits = torch.randint(1, 53, (n,), generator=gen)
    logu = torch.randint(0, 2**52, (n,), generator=gen, dtype=torch.int64) >> (52 - bits)
    return uniform.tolist() + logu.tolist()


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_dense_sweep_matches_math_isqrt(arith):
    values = list(range(0, 2**16 + 1)) + list(range(2**32 - 2**12, 2**32 + 2**12))
    got = isqrt(arith.tensor(torch.tensor(values)), arith)
    assert got.dtype == arith.dtype
    assert got.long().tolist() == [math.isqrt(v) for v in values]


@pytest.mark.parametrize("arith", BOTH, ids=lambda a: a.name)
def test_random_and_edge_values_match_math_isqrt(arith):
    values = _random_52bit(20_000, seed=7) + _edge_values()
    got = isqrt(arith.tensor(torch.tensor(values)), arith)
    assert got.long().tolist() == [math.isqrt(v) for v in values]


def test_backends_equal_and_shapes_kept():
    values = torch.tensor(_random_52bit(512, seed=8)).reshape(4, 2, 128)
    a = isqrt(INT.tensor(values), INT)
    b = isqrt(FLOAT.tensor(values), FLOAT)
    assert a.shape == values.shape
    assert torch.equal(a.double(), b)


def test_zero_and_small():
    for arith in BOTH:
        assert isqrt(arith.tensor(torch.tensor([0])), arith).tolist() == [0]
        assert isqrt(arith.tensor(torch.tensor([[1, 4], [8, 9]])), arith).long().tolist() == [[1, 2], [2, 3]]


def test_bit_length():
    values = [0, 1, 2, 3, 4, 255, 256, EXACT_LIMIT - 1] + [2**j for j in range(MAX_BITS)]
    for arith in BOTH:
        got = bit_length(arith.tensor(torch.tensor(values)), arith)
        assert got.long().tolist() == [v.bit_length() for v in values]



def test_fewer_iterations_are_not_enough():
    """The sweep above can fail: two Newton steps from 2^26 are far from converged for 52-bit inputs."""
    assert NEWTON_ITERATIONS == 10
    v = [EXACT_LIMIT - 1, 3 * 2**50 + 12345]
    got = isqrt(INT.tensor(torch.tensor(v)), INT, iterations=1)
    assert got.tolist() != [math.isqrt(x) for x in v]
