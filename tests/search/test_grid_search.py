"""Metric searches on small synthetic layers: FPCS against brute force, alternating, per-row choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitquant.quantizers import AdaLogSpec, UniformSpec
from vitquant.search.context import FitContext
from vitquant.search.grid_search import SearchSettings
from vitquant.search.metrics import score
from vitquant.search.registry import fit_point

pytestmark = pytest.mark.usefixtures("single_thread")


def _linear_ctx(x: torch.Tensor, seed: int = 0) -> FitContext:
    """A Linear consumer of ``x`` and its full-precision output."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, x.shape[-1], generator=g) / x.shape[-1] ** 0.5
    consume = lambda ops: F.linear(ops[0], w)  # noqa: E731
    return FitContext("layer", x, None, consume=consume, operands=[x], operand=0, others=[lambda t: t],
                      reference=consume([x]))


def _best(spec, ctx, search, settings=SearchSettings()):
    from dataclasses import replace

    q, evaluations = fit_point(replace(spec, search=search), ctx, settings)
    return float(score(q, ctx, "mse")), evaluations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpcs_reaches_brute_force_on_adalog_with_a_sixth_of_the_evaluations(seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, 32, generator=g) * 1.5).exp() * 0.1  # log-normal, non-negative
    ctx = _linear_ctx(x, seed)
    spec = AdaLogSpec(bits=3)
    brute, brute_n = _best(spec, ctx, "brute-force")
    fpcs, fpcs_n = _best(spec, ctx, "fpcs")
    assert brute_n == 128 * 32 + 1  # the whole grid (q x scale) and the initial point
    assert fpcs_n <= 128 * 5 + 1 and fpcs_n * 6 < brute_n  # budget x (steps + 1), the initial point
    assert fpcs <= brute * 1.02  # within 2 % of the brute-force optimum (it refines the scale, so can beat it)


@pytest.mark.parametrize("bits", [3, 4])
def test_fpcs_matches_brute_force_on_uniform(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 24, generator=g) + torch.randn(24, generator=g) * 0.5
    ctx = _linear_ctx(x)
    spec = UniformSpec(bits=bits)
    brute, brute_n = _best(spec, ctx, "brute-force")
    fpcs, fpcs_n = _best(spec, ctx, "fpcs", SearchSettings(budget=64, topk=8, steps=3))
    assert fpcs_n <= 64 * 4 + 1 and fpcs_n < brute_n
    assert fpcs <= brute * 1.02


def test_searches_never_worse_than_the_initialisation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 24, generator=g) * torch.rand(24, generator=g) * 3
    ctx = _linear_ctx(x)
    spec = UniformSpec(bits=3)
    init, n = _best(spec, ctx, "percentile")
    assert n == 0
    for search in ("alternating", "fpcs", "brute-force"):
        found, n = _best(spec, ctx, search)
        assert n > 0 and found <= init, search


def test_per_head_rows_pick_their_own_candidate():
    """With per-head rows that the output keeps apart, each head gets the best scale for itself."""
    g = torch.Generator().manual_seed(0)
    heads = torch.stack([torch.randn(2, 20, 8, generator=g) * s for s in (0.1, 1.0, 10.0)], dim=1)  # [B, H, N, D]
    other = torch.randn(2, 3, 8, 20, generator=g)
    consume = lambda ops: ops[0] @ ops[1]  # noqa: E731
    ctx = FitContext("qk", heads, 1, consume=consume, operands=[heads, other], operand=0,
                     others=[lambda t: t, lambda t: t], reference=consume([heads, other]), output_axis=1)
    q, _ = fit_point(UniformSpec(bits=4, granularity="head", search="brute-force"), ctx)
    assert q.scale.shape == (3, 1, 1)
    scales = q.scale.flatten()
    assert scales[0] < scales[1] < scales[2]  # each head its own range
    # and each head's scale is the best of the grid for that head alone
    for h in range(3):
        single = FitContext("h", heads[:, h : h + 1], None, consume=consume, operands=[heads[:, h : h + 1], other[:, h : h + 1]],
                            operand=0, others=[lambda t: t, lambda t: t], reference=consume([heads[:, h : h + 1], other[:, h : h + 1]]))
        alone, _ = fit_point(UniformSpec(bits=4, search="brute-force"), single)
        assert torch.isclose(alone.scale.flatten()[0], scales[h], rtol=1e-5)


def test_metrics_without_consumer_compare_the_input():
    x = torch.randn(100)
    ctx = FitContext("x", x, None)
    q = UniformSpec(bits=4).fit(x)
    assert torch.isclose(score(q, ctx, "mse")[0], ((q(x) - x) ** 2).mean())
    assert float(score(q, ctx, "cosine")[0]) >= 0
    from vitquant.errors import ConfigError

    with pytest.raises(ConfigError, match="hessian"):
        score(q, ctx, "hessian")


def test_hessian_metric_weights_by_squared_gradient():
    x = torch.randn(8, 6)
    ctx = _linear_ctx(x)
    q = UniformSpec(bits=2).fit(x)
    out = ctx.consumer_output(q(x))
    ctx.grad = torch.zeros_like(out)
    assert float(score(q, ctx, "hessian")[0]) == 0.0
    ctx.grad = torch.full_like(out, 2.0)
    assert torch.isclose(score(q, ctx, "hessian")[0], 4 * ((out - ctx.reference) ** 2).mean())


def test_weight_rows_searched_by_the_layer_output_per_output_channel():
    """A weight quantizer per output channel, scored on the layer output: every row no worse than its
    data-only initialisation, and rows pick different candidates."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 24, generator=g) * torch.linspace(0.1, 3, 12).unsqueeze(1)
    x = torch.randn(64, 24, generator=g) * torch.linspace(0.2, 4, 24)
    consume = lambda ops: F.linear(x, ops[0])  # noqa: E731
    ctx = FitContext("fc.weight", w, 0, consume=consume, operands=[w], operand=0, others=[lambda t: t],
                     reference=consume([w]), output_axis=-1)
    spec = UniformSpec(bits=3, granularity="channel")
    init = spec.fit(w, axis=0)
    from dataclasses import replace

    searched, n = fit_point(replace(spec, search="fpcs"), ctx)
    assert n > 0 and searched.scale.shape == (12, 1)
    assert torch.all(score(searched, ctx, "mse") <= score(init, ctx, "mse") + 1e-9)
    assert (score(searched, ctx, "mse") < score(init, ctx, "mse")).any()
