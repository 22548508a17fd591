"""BitLog2 divisor search: the closed form equals the published brute-force loop."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.bitlog2 import BitLog2Quantizer, BitLog2Scheme, dequant_float, to_int_domain
from vitquant.search.bitlog2_divisor import brute_force_divisor, divisor_range, fit_bitlog2, optimal_divisor

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEMES = [
    BitLog2Scheme(half=False, variant=16),
    BitLog2Scheme(half=False, variant=17),
    BitLog2Scheme(half=True, variant=16),
    BitLog2Scheme(half=True, variant=17),
]
IDS = [s.name for s in SCHEMES]
BRUTE_FORCE_BUDGET = 4e6  # candidates x elements the library's one-shot brute force may materialise


def chunked_brute_force(x: torch.Tensor, scheme: BitLog2Scheme, chunk: int | None = None) -> int:
    """The same loop as :func:`brute_force_divisor` (float64 squared error per candidate s, first
    minimum), over candidate blocks so large inputs fit in memory. Each row's sum is computed exactly
    as in the one-shot version."""
    x = x.detach().to(torch.float32)
    d = dequant_float(to_int_domain(x, scheme), scheme.half).reshape(-1).to(torch.float64)
    xf = x.reshape(-1).to(torch.float64)
    lo, hi = divisor_range(d, scheme)
    chunk = chunk or max(1, 2**18 // xf.numel())
    best_s, best_err = None, None
    for start in range(lo, hi + 1, chunk):
        s = torch.arange(start, min(start + chunk, hi + 1), dtype=torch.float64)
        err = ((xf.unsqueeze(0) - d.unsqueeze(0) / s.unsqueeze(1)) ** 2).sum(dim=1)
        i = int(torch.argmin(err))
        if best_err is None or float(err[i]) < best_err:
            best_s, best_err = start + i, float(err[i])
    return best_s


def reference_divisor(x: torch.Tensor, scheme: BitLog2Scheme) -> int:
    d = dequant_float(to_int_domain(x.to(torch.float32), scheme), scheme.half)
    lo, hi = divisor_range(d, scheme)
    if (hi - lo + 1) * x.numel() <= BRUTE_FORCE_BUDGET:
        return brute_force_divisor(x, scheme)
    return chunked_brute_force(x, scheme)


def _random_inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2024)
    sizes = [5, 7, 16, 33, 64, 100, 197, 250, 512, 1000, 2000]
    temps = [0.05, 0.3, 1.0, 3.0, 10.0, 40.0]
    out = []
    for i in range(36):
        n = sizes[i % len(sizes)]
        t = temps[i % len(temps)]
        width = min(n, [5, 16, 197][i % 3])
        logits = torch.randn((n + width - 1) // width, width, generator=gen) * t
        x = torch.softmax(logits, dim=-1).reshape(-1)[:n].clone()
        if i % 4 == 1:
            x[: max(1, n // 5)] = 0.0  # exact zeros
        if i % 5 == 2:
            x[-1] = 1.0  # an exact one
        if i % 9 == 4:
            x = torch.rand(n, generator=gen) ** 6  # not softmax rows: arbitrary probabilities
        out.append(x)
    return out


INPUTS = _random_inputs()


def test_inputs_are_varied():
    sizes = {x.numel() for x in INPUTS}
    assert len(INPUTS) >= 30 and min(sizes) <= 5 and max(sizes) >= 2000
    assert any(bool((x == 0).any()) for x in INPUTS) and any(bool((x == 1).any()) for x in INPUTS)


@pytest.mark.parametrize("scheme", SCHEMES, ids=IDS)
def test_fit_equals_brute_force(scheme):
    for i, x in enumerate(INPUTS):
        fitted = fit_bitlog2(x, scheme)
        assert isinstance(fitted, BitLog2Quantizer)
        assert fitted.scheme == scheme
        expected = reference_divisor(x, scheme)
        assert fitted.divisor == expected, (i, x.numel(), fitted.divisor, expected)


@pytest.mark.parametrize("scheme", [SCHEMES[1], SCHEMES[3]], ids=[IDS[1], IDS[3]])
def test_chunked_reference_agrees_with_library_brute_force(scheme):
    # the chunked helper used for big inputs is itself checked against the library loop
    for x in INPUTS[:6]:
        assert chunked_brute_force(x, scheme, chunk=8191) == brute_force_divisor(x, scheme)


def test_fit_at_other_bit_widths():
    gen = torch.Generator().manual_seed(77)
    for bits in (2, 3):
        for half in (False, True):
            for variant in (16, 17):
                scheme = BitLog2Scheme(half=half, variant=variant, bits=bits)
                for _ in range(5):
                    x = torch.softmax(torch.randn(300, generator=gen) * 2, dim=0)
                    assert fit_bitlog2(x, scheme).divisor == brute_force_divisor(x, scheme)


# --------------------------------------------------------------------------- optimal_divisor
def _loss(a: float, b: float, s: int) -> float:
    return b / (s * s) - 2.0 * a / s


def test_optimal_divisor_matches_scan():
    gen = torch.Generator().manual_seed(4)
    for _ in range(300):
        a = float(torch.rand(1, generator=gen)) * 50 + 1e-3
        b = a * float(torch.rand(1, generator=gen)) * 400
        lo = int(torch.randint(1, 50, (1,), generator=gen))
        hi = lo + int(torch.randint(0, 400, (1,), generator=gen))
        expected = min(range(lo, hi + 1), key=lambda s: (_loss(a, b, s), s))
        assert optimal_divisor(a, b, lo, hi) == expected


@pytest.mark.parametrize("a", [0.0, -1.0, -0.0])
def test_optimal_divisor_non_positive_a_returns_lo(a):
    assert optimal_divisor(a, 5.0, 7, 100) == 7


def test_optimal_divisor_s_star_below_lo():
    # s* = b / a = 2 < lo = 10: the loss rises on [lo, hi], so lo
    assert optimal_divisor(5.0, 10.0, 10, 1000) == 10


def test_optimal_divisor_s_star_above_hi():
    # s* = 5000 > hi = 300: the loss falls on [lo, hi], so hi
    assert optimal_divisor(1.0, 5000.0, 3, 300) == 300


def test_optimal_divisor_interior():
    assert optimal_divisor(2.0, 21.0, 1, 100) in (10, 11)
    assert optimal_divisor(1.0, 10.2, 1, 100) == 10
    assert optimal_divisor(1.0, 10.8, 1, 100) == 11


@pytest.mark.parametrize(("n", "a", "b"), [(1, 3.0, 4.0), (1, 48.0, 64.0), (2, 180.0, 432.0)])
def test_optimal_divisor_tie_goes_to_smaller(n, a, b):
    # L(n) == L(n+1) exactly when b/a = 2n(n+1)/(2n+1); the values are chosen so the float losses tie
    assert _loss(a, b, n) == _loss(a, b, n + 1)
    assert optimal_divisor(a, b, 1, 1000) == n
    assert optimal_divisor(a, b, n, n + 1) == n
    assert optimal_divisor(a, b, n + 1, 1000) == n + 1  # lo cuts the tie off


def test_optimal_divisor_empty_range():
    with pytest.raises(ValueError):
        optimal_divisor(1.0, 1.0, 5, 4)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("scheme", SCHEMES, ids=IDS)
@pytest.mark.parametrize("bad", [-0.01, 1.01, 2.0, float("nan"), float("inf")])
def test_out_of_range_or_nan_raises(scheme, bad):
    x = torch.softmax(torch.randn(50), dim=0)
    x[7] = bad
    with pytest.raises(NumericalError, match="attn map 3"):
        fit_bitlog2(x, scheme, where="attn map 3")


def test_empty_raises():
    with pytest.raises(NumericalError):
        fit_bitlog2(torch.zeros(0), SCHEMES[0])


def test_slightly_above_one_tolerated():
    x = torch.tensor([0.2, 1.0 + 5e-7, 0.0])
    q = fit_bitlog2(x, SCHEMES[3])
    assert q.divisor >= 1


@pytest.mark.parametrize("scheme", SCHEMES, ids=IDS)
def test_all_zero_input(scheme):
    x = torch.zeros(4, 10, 10)
    q = fit_bitlog2(x, scheme)
    assert q.divisor >= 1
    assert torch.equal(q(x), torch.zeros_like(x))


@pytest.mark.parametrize("scheme", SCHEMES, ids=IDS)
def test_fitted_divisor_not_below_largest_level(scheme):
    x = torch.softmax(torch.randn(3, 40) * 5, dim=-1)
    q = fit_bitlog2(x, scheme)
    d = dequant_float(to_int_domain(x, scheme), scheme.half)
    assert int(d.max()) <= q.divisor <= scheme.int_max - 1
    assert float(q(x).max()) <= 1.0
