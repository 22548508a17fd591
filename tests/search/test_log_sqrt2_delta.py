"""log√2 Δ search (RepQ-ViT): lowest-MSE quantile candidate, against a slow torch.quantile loop."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer
from vitquant.search.log_sqrt2_delta import fit_log_sqrt2
from vitquant.search.percentile_mse import PERCENTILES

pytestmark = pytest.mark.usefixtures("single_thread")


def slow_reference_delta(x: torch.Tensor, bits: int, variant: int) -> float:
    """Loop over torch.quantile(x, p) for p in 0.999, 0.9999, 0.99999; keep the lowest mean squared
    error with strict '<' (first candidate on ties); skip non-positive candidates."""
    flat = x.reshape(-1).to(torch.float32)
    best, best_score = None, float("inf")
    for p in PERCENTILES:
        delta = torch.quantile(flat, p)
        if not float(delta) > 0:
            continue
        q = LogSqrt2Quantizer(bits, variant, delta)
        score = float(torch.mean((q(flat) - flat) ** 2))
        if score < best_score:
            best, best_score = float(delta), score
    assert best is not None
    return best


def _attention(gen: torch.Generator, heads: int, tokens: int, temp: float) -> torch.Tensor:
    return torch.softmax(torch.randn(heads, tokens, tokens, generator=gen) * temp, dim=-1)


CASES = [
    (4, 17, 3, 50, 1.0),
    (4, 16, 3, 50, 1.0),
    (4, 17, 2, 197, 4.0),
    (4, 16, 2, 197, 4.0),
    (3, 17, 4, 30, 0.3),
    (3, 16, 4, 30, 10.0),
    (6, 17, 1, 100, 2.0),
    (8, 16, 1, 64, 30.0),
    (2, 17, 2, 20, 1.5),
]


@pytest.mark.parametrize(("bits", "variant", "heads", "tokens", "temp"), CASES)
def test_delta_equals_slow_reference(bits, variant, heads, tokens, temp):
    gen = torch.Generator().manual_seed(bits * 1000 + tokens)
    x = _attention(gen, heads, tokens, temp)
    q = fit_log_sqrt2(x, bits, variant)
    assert isinstance(q, LogSqrt2Quantizer)
    assert q.bits == bits and q.variant == variant
    assert float(q.delta) == slow_reference_delta(x, bits, variant)


def test_delta_equals_slow_reference_small_and_tied():
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 5, 13, 1000):
        for variant in (16, 17):
            x = (torch.rand(n, generator=gen) * 4).round() / 4 + 0.01  # heavy ties, strictly positive
            q = fit_log_sqrt2(x, 4, variant)
            assert float(q.delta) == slow_reference_delta(x, 4, variant)


def test_mostly_zero_map_skips_zero_candidates():
    # 20k zeros and 3 positive values: the 0.999 quantile is 0 (skipped), the others are positive
    x = torch.zeros(20_000)
    x[:3] = torch.tensor([0.2, 0.5, 0.9])
    cands = [float(torch.quantile(x, p)) for p in PERCENTILES]
    assert cands[0] == 0.0 and cands[1] > 0 and cands[2] > 0
    q = fit_log_sqrt2(x, 4, 17)
    assert float(q.delta) == slow_reference_delta(x, 4, 17)
    assert float(q.delta) in cands[1:]
    y = torch.zeros(500_000)
    y[0] = 0.7  # every quantile candidate is zero: delta falls back to max(x)
    assert all(float(torch.quantile(y, p)) == 0 for p in PERCENTILES)
    assert float(fit_log_sqrt2(y, 4, 16).delta) == pytest.approx(0.7, rel=1e-7)


@pytest.mark.parametrize("variant", [16, 17])
def test_all_zero_input(variant):
    x = torch.zeros(3, 20, 20)
    q = fit_log_sqrt2(x, 4, variant)
    assert float(q.delta) == 1.0
    assert torch.equal(q(x), torch.zeros_like(x))


@pytest.mark.parametrize("bad", [-1e-6, -0.5])
def test_negative_input_raises(bad):
    x = torch.rand(100)
    x[10] = bad
    with pytest.raises(NumericalError):
        fit_log_sqrt2(x, 4, 17)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_raises_with_where(bad):
    x = torch.rand(100)
    x[10] = bad
    with pytest.raises(NumericalError, match="blocks.0.attn"):
        fit_log_sqrt2(x, 4, 17, where="blocks.0.attn")


def test_empty_raises():
    with pytest.raises(NumericalError):
        fit_log_sqrt2(torch.zeros(0), 4, 17)


@pytest.mark.parametrize("percentiles", [(0.5, 1.0), (1.0, 0.5)])
def test_exact_tie_keeps_first_candidate(percentiles):
    # Δ = 2^-0.5 and Δ = 0.75 give bit-identical mean squared errors here: strict '<' keeps the first.
    x = torch.tensor([0.1875, 2**-0.5, 0.75], dtype=torch.float32)
    deltas = [torch.quantile(x, p) for p in percentiles]
    scores = [float(torch.mean((LogSqrt2Quantizer(2, 16, d)(x) - x) ** 2)) for d in deltas]
    assert scores[0] == scores[1] and float(deltas[0]) != float(deltas[1])  # the constructed tie
    q = fit_log_sqrt2(x, 2, 16, percentiles=percentiles)
    assert float(q.delta) == float(deltas[0])
