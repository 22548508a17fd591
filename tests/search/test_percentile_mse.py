"""Percentile/MSE search of uniform quantizer parameters against a slow RepQ-ViT-style reference."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import NumericalError
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.search.percentile_mse import PERCENTILES, fit_uniform, search_uniform_params

pytestmark = pytest.mark.usefixtures("single_thread")


def slow_reference(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RepQ-ViT's loop: for each percentile, clip to [quantile(1-p), quantile(p)],
    delta = (max - min) / (2^b - 1), z = round(-min / delta), fake-quantize, keep the lowest mean
    squared error with strict '<' (first one on ties). Zero-range candidates are skipped."""
    x = x.detach().reshape(-1).to(torch.float32)
    qmax = 2**bits - 1
    best, best_score = None, float("inf")
    for p in PERCENTILES:
        new_max = torch.quantile(x, p)
        new_min = torch.quantile(x, 1.0 - p)
        delta = (new_max - new_min) / qmax
        if not float(delta) > 0:
            continue
        zero = (-new_min / delta).round()
        x_q = (torch.clamp(torch.round(x * (1.0 / delta)) + zero, 0, qmax) - zero) * delta
        score = float(torch.mean((x - x_q) ** 2))
        if score < best_score:
            best_score, best = score, (delta, zero)
    assert best is not None, "reference needs at least one non-degenerate candidate"
    return best


def _sample(gen: torch.Generator, kind: str, n: int) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, generator=gen) * 2 + 0.3
    if kind == "rounded":
        return (torch.randn(n, generator=gen) * 3).round()
    if kind == "skewed":  # post-GELU-like: many small negatives, long positive tail
        return torch.nn.functional.gelu(torch.randn(n, generator=gen) * 2)
    if kind == "heavy":
        return torch.randn(n, generator=gen) ** 3
    raise AssertionError(kind)


CASES = [
    (kind, n, bits)
    for kind in ("normal", "rounded", "skewed", "heavy")
    for n, bits in ((7, 2), (50, 3), (997, 4), (5000, 6), (20_000, 8), (123, 5), (3000, 7))
]


@pytest.mark.parametrize(("kind", "n", "bits"), CASES)
def test_per_tensor_equals_reference(kind, n, bits):
    gen = torch.Generator().manual_seed(31 * n + bits)
    x = _sample(gen, kind, n)
    q = fit_uniform(x, bits)
    assert isinstance(q, UniformQuantizer)
    assert q.scale.shape == () and q.zero_point.shape == ()
    delta, zero = slow_reference(x, bits)
    assert torch.equal(q.scale, delta), (float(q.scale), float(delta))
    assert torch.equal(q.zero_point, zero), (float(q.zero_point), float(zero))


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_per_channel_weight_dim0(bits):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 50, generator=gen) * torch.linspace(0.01, 3, 16).unsqueeze(1)
    w[3] = w[3].round()  # one tie-heavy channel
    q = fit_uniform(w, bits, channel_dim=0)
    assert q.scale.shape == (16, 1) and q.zero_point.shape == (16, 1)
    for c in range(16):
        delta, zero = slow_reference(w[c], bits)
        assert torch.equal(q.scale[c, 0], delta), c
        assert torch.equal(q.zero_point[c, 0], zero), c
    assert q(w).shape == w.shape


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_per_channel_activation_last_dim(bits):
    gen = torch.Generator().manual_seed(40 + bits)
    a = torch.randn(4, 10, 8, generator=gen) * torch.tensor([0.1, 1, 5, 0.5, 2, 3, 0.01, 10]) + torch.arange(8)
    q = fit_uniform(a, bits, channel_dim=-1)
    assert q.scale.shape == (8,) and q.zero_point.shape == (8,)
    for c in range(8):
        delta, zero = slow_reference(a[..., c], bits)
        assert torch.equal(q.scale[c], delta), c
        assert torch.equal(q.zero_point[c], zero), c
    # channel_dim=2 is the same dimension
    q2 = fit_uniform(a, bits, channel_dim=2)
    assert torch.equal(q2.scale, q.scale) and torch.equal(q2.zero_point, q.zero_point)


def test_per_channel_middle_dim_broadcasts():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 6, 20, generator=gen) * torch.arange(1, 7).reshape(1, 6, 1)
    q = fit_uniform(a, 4, channel_dim=1)
    assert q.scale.shape == (6, 1)
    for c in range(6):
        delta, zero = slow_reference(a[:, c, :], 4)
        assert torch.equal(q.scale[c, 0], delta) and torch.equal(q.zero_point[c, 0], zero)


@pytest.mark.parametrize("value", [2.5, -1.0, 0.0])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_constant_channel_reproduced_exactly(value, bits):
    x = torch.full((5, 40), value)
    for q in (fit_uniform(x, bits), fit_uniform(x, bits, channel_dim=0)):
        scale, zero = q.scale.reshape(-1), q.zero_point.reshape(-1)
        assert torch.isfinite(scale).all() and (scale > 0).all()
        assert torch.equal(zero, zero.round()) and torch.isfinite(zero).all()
        assert torch.equal(q(x), x)
    if value == 0.0:
        q = fit_uniform(x, bits)
        assert float(q.scale) == 1.0 and float(q.zero_point) == 0.0


def test_constant_channel_among_normal_ones():
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(4, 30, generator=gen)
    w[1] = 2.5
    w[2] = 0.0
    q = fit_uniform(w, 4, channel_dim=0)
    out = q(w)
    assert torch.equal(out[1], w[1]) and torch.equal(out[2], w[2])
    for c in (0, 3):
        delta, zero = slow_reference(w[c], 4)
        assert torch.equal(q.scale[c, 0], delta) and torch.equal(q.zero_point[c, 0], zero)


@pytest.mark.parametrize(("value", "bits"), [(0.1, 2), (-7.77, 2), (5e5, 4)])
def test_constant_channel_arbitrary_value_exact(value, bits):
    x = torch.full((3, 10), value)
    q = fit_uniform(x, bits)
    assert torch.equal(q(x), x)


def test_subnormal_data_gives_finite_output():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=gen) * 1e-39
    x[0] = 0.0
    q = fit_uniform(x, 8)
    assert torch.isfinite(q(x)).all()


def test_all_zero_range_candidates_fall_back_to_full_range():
    # 200k zeros and one 1.0: every percentile clip has zero range -> full observed range [0, 1]
    x = torch.zeros(200_000)
    x[123] = 1.0
    q = fit_uniform(x, 4)
    assert float(q.scale) == pytest.approx(1.0 / 15, rel=1e-7)
    assert float(q.zero_point) == 0.0
    assert float(q(x).max()) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_with_where(bad):
    x = torch.randn(10, 10)
    x[3, 4] = bad
    with pytest.raises(NumericalError, match="blocks.3.attn.qkv input"):
        fit_uniform(x, 4, where="blocks.3.attn.qkv input")
    with pytest.raises(NumericalError, match="my point"):
        fit_uniform(x, 4, channel_dim=0, where="my point")


def test_empty_input_raises():
    with pytest.raises(NumericalError):
        fit_uniform(torch.zeros(0), 4)
    with pytest.raises(NumericalError):
        fit_uniform(torch.zeros(0, 5), 4, channel_dim=1)


def test_search_uniform_params_rows_independent():
    gen = torch.Generator().manual_seed(12)
    rows = torch.randn(5, 200, generator=gen) * torch.arange(1, 6).unsqueeze(1)
    delta, zero = search_uniform_params(rows, 4)
    assert delta.shape == (5,) and zero.shape == (5,)
    for r in range(5):
        d1, z1 = search_uniform_params(rows[r : r + 1], 4)
        assert torch.equal(d1[0], delta[r]) and torch.equal(z1[0], zero[r])


@pytest.mark.parametrize("percentiles", [(0.75, 1.0), (1.0, 0.75)])
def test_exact_tie_keeps_first_candidate(percentiles):
    # Two different clipping ranges with bit-identical mean squared error: strict '<' keeps the first.
    x = torch.tensor([-3.0, 3.0, -2.0, -3.0, -3.0, 2.0])
    qmax = 3
    scores = {}
    for p in percentiles:
        hi, lo = torch.quantile(x, p), torch.quantile(x, 1.0 - p)
        d = (hi - lo) / qmax
        z = (-lo / d).round()
        xq = (torch.clamp(torch.round(x * (1.0 / d)) + z, 0, qmax) - z) * d
        scores[p] = (d, z, float(torch.mean((x - xq) ** 2)))
    (d0, z0, s0), (d1, _, s1) = scores[percentiles[0]], scores[percentiles[1]]
    assert s0 == s1 and not torch.equal(d0, d1)  # the constructed tie
    q = fit_uniform(x, 2, percentiles=percentiles)
    assert torch.equal(q.scale, d0) and torch.equal(q.zero_point, z0)
