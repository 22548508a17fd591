"""Plain-data histograms of the compare figures: every value accounted for, log-spaced edges, and the
counts of both kinds against numpy's histogram on the same edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitquant.compare.histograms import histogram, log_histogram


def _accounted(hist: dict) -> int:
    return sum(hist["counts"]) + hist["below"] + hist["above"]


def test_log_histogram_accounts_for_every_value():
    inside = torch.tensor([1e-10, 3e-7, 0.02, 0.5, 1.0])  # both ends of [low, high] are inside
    below = torch.tensor([0.0, 0.0, -0.0, 1e-12, 9.9e-11, -0.25])  # zeros (both signs), tiny, negative
    above = torch.tensor([1.0000001, 2.0, 1e3])
    hist = log_histogram(torch.cat([below, inside, above]).reshape(2, 7))
    assert hist["values"] == 14
    assert sum(hist["counts"]) == 5 and hist["below"] == 6 and hist["above"] == 3 and hist["zeros"] == 3
    assert _accounted(hist) == hist["values"]
    assert hist["counts"][0] == 1 and hist["counts"][-1] == 1  # low in the first bin, high in the last
    assert hist["scale"] == "log"


def test_log_histogram_edges_are_log_spaced():
    hist = log_histogram(torch.rand(100), low=1e-6, high=1.0, bins=12)
    edges = np.array(hist["edges"])
    assert len(edges) == 13 and len(hist["counts"]) == 12
    assert edges[0] == pytest.approx(1e-6, rel=1e-12) and edges[-1] == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(np.diff(np.log10(edges)), 0.5, rtol=1e-9)  # 6 decades in 12 equal steps


def test_log_histogram_counts_match_numpy():
    gen = torch.Generator().manual_seed(1)
    values = 10 ** (-12 * torch.rand(5000, generator=gen))  # 1e-12 .. 1: two decades below the first edge
    values[:50] = 0.0
    hist = log_histogram(values)
    inside = values.double().numpy()
    inside = inside[(inside >= 1e-10) & (inside <= 1.0)]
    want, _ = np.histogram(inside, bins=np.array(hist["edges"]))
    assert hist["counts"] == want.tolist()
    assert hist["below"] == int((values < 1e-10).sum()) > 50 and hist["zeros"] == 50
    assert _accounted(hist) == 5000


def test_log_histogram_with_nothing_inside():
    hist = log_histogram(torch.zeros(3, 4), bins=5)
    assert hist["counts"] == [0] * 5 and hist["below"] == hist["zeros"] == hist["values"] == 12


def test_histogram_counts_match_numpy():
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(4, 500, generator=gen) * 3 - 1
    hist = histogram(values, bins=20)
    want, edges = np.histogram(values.double().numpy().reshape(-1), bins=20)
    assert hist["counts"] == want.tolist()
    np.testing.assert_allclose(hist["edges"], edges, rtol=1e-12)
    assert hist["edges"][0] == float(values.min()) and hist["edges"][-1] == float(values.max())
    assert hist["below"] == hist["above"] == 0 and hist["values"] == sum(hist["counts"]) == 2000
    assert hist["scale"] == "linear"


@pytest.mark.parametrize("value", [3.0, 0.0, -1e-3])
def test_histogram_of_a_constant(value):
    hist = histogram(torch.full((7, 3), value), bins=4)
    assert hist["edges"] == pytest.approx([value, value + 0.25, value + 0.5, value + 0.75, value + 1.0])
    assert hist["counts"] == [21, 0, 0, 0]
    assert hist["zeros"] == (21 if value == 0.0 else 0)
    assert all(math.isfinite(e) for e in hist["edges"])
