"""Calibration passes: network order, unit replay, any number of batches, recipes on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from vitquant import qconfig as qc
from vitquant.calibration import prepare, quantize_model
from vitquant.calibration.passes import UnitCache, consumers_in_order
from vitquant.calibration.pipeline import calibration_batches
from vitquant.errors import DataError
from vitquant.models.adapters import adapter_for
from vitquant.nn import Mode, set_mode
from vitquant.recipes import build_qconfig

KINDS = ("vit", "swin")


@pytest.mark.parametrize("kind", KINDS)
def test_consumers_in_network_order_with_units(tiny, kind):
    model = prepare(tiny.model(kind), qc.repq_vit_qconfig())
    units = adapter_for(model).units(model)
    consumers = consumers_in_order(model, units, tiny.images(1, kind))
    names = [c.name for c in consumers]
    assert names[0] == "patch_embed.proj" and consumers[0].unit == -1
    assert names[-1] == "head.fc" if kind == "swin" else names[-1] == "head"
    assert consumers[-1].unit == len(units)
    assert [c.unit for c in consumers] == sorted(c.unit for c in consumers)  # units visited in order
    first_block = [c.name.rsplit(".", 1)[-1] if "attn." not in c.name else c.name.split("attn.")[-1]
                   for c in consumers if c.unit == (1 if kind == "swin" and units[0][0].endswith("downsample") else 0)]
    assert first_block[:4] == ["qkv", "qk", "av", "proj"]
    assert first_block[-2:] == ["fc1", "fc2"]


@pytest.mark.parametrize("kind", KINDS)
def test_unit_replay_gives_the_same_consumer_inputs(tiny, kind):
    """Replaying cached unit outputs reproduces exactly what a full forward feeds a later consumer."""
    model = prepare(tiny.model(kind), qc.repq_vit_qconfig())
    set_mode(model, Mode.FLOAT)
    units = adapter_for(model).units(model)
    batches = [tiny.images(3, kind, seed=1), tiny.images(2, kind, seed=2)]
    last = consumers_in_order(model, units, batches[0][:1])[-2]  # the last block's fc2
    fresh = UnitCache(units).run(model, batches, last.module, "input")
    cache = UnitCache(units)
    passes = cache.advance(model, batches, last.unit)
    assert passes == last.unit and cache.index == last.unit - 1
    replayed = cache.run(model, batches, last.module, "input")
    for a, b in zip(fresh, replayed):
        assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("kind", KINDS)
def test_batches_give_the_same_model_as_one_batch(tiny, kind):
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    one = quantize_model(model, x, qc.repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    many = quantize_model(model, list(x.split(3)), qc.repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    assert many.images == one.images == 8
    test = tiny.images(4, kind, seed=9)
    with torch.no_grad():
        assert torch.allclose(one.model(test), many.model(test), atol=1e-4)
    assert [p.levels_used for p in one.points] == [p.levels_used for p in many.points]


def test_batches_are_checked():
    with pytest.raises(DataError, match="empty"):
        calibration_batches([], 4)
    with pytest.raises(DataError, match="different image shapes"):
        calibration_batches([torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16)], 4)
    batches = calibration_batches([torch.zeros(2, 3, 8, 8)] * 3, 4)  # first batch grows to the search images
    assert [b.shape[0] for b in batches] == [4, 2]
    batches = calibration_batches([torch.zeros(1, 3, 8, 8)] * 2, 4)  # fewer images than search images
    assert [b.shape[0] for b in batches] == [2]  # one batch, no empty one after it


@pytest.mark.parametrize("recipe", ["adalog", "ptq4vit", "bitlog2-half-17"])
@pytest.mark.parametrize("kind", KINDS)
def test_recipes_calibrate_tiny_models(tiny, kind, recipe, single_thread):
    model = tiny.model(kind)
    cfg = build_qconfig(recipe, 4, 4)
    cfg = type(cfg)(**{**cfg.__dict__, "search": type(cfg.search)(budget=16, topk=4, steps=2, rounds=1)})
    result = quantize_model(copy.deepcopy(model), tiny.images(6, kind), cfg)
    with torch.no_grad():
        logits = result.model(tiny.images(3, kind, seed=4))
    assert torch.isfinite(logits).all()
    for report in result.points:
        assert 1 <= report.levels_used <= report.max_levels, report
        searched = cfg.spec_for(report.name, report.role).search_name != "percentile"
        assert (report.evaluations > 0) == searched, report
    if recipe == "adalog":  # the post-GELU shift went into every fc2 bias
        assert result.reparameterizations["activation_shift"] == sum(1 for p in result.points if p.role == qc.POST_GELU)
    if recipe == "ptq4vit":
        assert "layernorm_scale" not in result.reparameterizations


def test_hessian_metric_collects_gradients(tiny):
    model = tiny.model("vit")
    cfg = build_qconfig("repq-vit", 4, 4, search="alternating", metric="hessian")
    cfg = type(cfg)(**{**cfg.__dict__, "search": type(cfg.search)(rounds=1)})
    result = quantize_model(model, tiny.images(6, "vit"), cfg)
    assert all(p.metric == "hessian" for p in result.points if p.role != qc.WEIGHT and p.evaluations)
    assert result.passes > 0


def _fitted(result) -> list[tuple[str, dict, list[int] | None]]:
    from vitquant.calibration import fingerprint_points

    return [(name, q.state(), counts) for name, q, counts in fingerprint_points(result.model)]


def _same_model(tiny, kind: str, one, passes) -> None:
    """The same points (parameters and code histograms) and the same logits on other images."""
    assert passes.passes > one.passes
    assert [p.to_dict() | {"search_seconds": 0} for p in one.points] == [p.to_dict() | {"search_seconds": 0} for p in passes.points]
    for (name, a, ca), (_, b, cb) in zip(_fitted(one), _fitted(passes)):
        assert ca == cb, name
        assert (a.kind, a.meta, sorted(a.tensors)) == (b.kind, b.meta, sorted(b.tensors)), name
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), name
    test = tiny.images(4, kind, seed=5)
    with torch.no_grad():
        assert torch.equal(one.model(test), passes.model(test))


@pytest.mark.parametrize("recipe", ["bitlog2-half-17", "repq-vit", "ptq4vit"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_pass_gives_the_model_of_the_consumer_passes(tiny, kind, recipe, monkeypatch, single_thread):
    """One batch: the points fitted in one forward (pre-hooks) are exactly those the consumer-by-consumer
    observation passes fit: the same parameters, code histograms and logits."""
    from vitquant.calibration.pipeline import _Fitter

    model, x = tiny.model(kind), tiny.images(6, kind)
    cfg = build_qconfig(recipe, 4, 4)
    cfg = type(cfg)(**{**cfg.__dict__, "search": type(cfg.search)(budget=16, topk=4, steps=2, rounds=1)})
    one = quantize_model(model, x, cfg)
    assert one.passes == 1 + (recipe == "ptq4vit")  # ptq4vit: and the gradient pass of its Hessian metric
    monkeypatch.setattr(_Fitter, "fits_in_one_pass", lambda self: False)
    _same_model(tiny, kind, one, quantize_model(model, x, cfg))


def test_what_needs_more_passes_is_fitted_by_passes(tiny):
    """Several batches, AdaLog's "before" shift and parallel inputs keep the consumer-by-consumer passes."""
    from dataclasses import replace

    model, x = tiny.model("vit"), tiny.images(6, "vit")
    base = qc.repq_vit_qconfig(4, 4)
    assert quantize_model(model, x, base).passes == 1
    assert quantize_model(model, list(x.split(3)), base).passes > 1
    assert quantize_model(model, x, replace(base, inputs="parallel")).passes > 1
    cfg = build_qconfig("bitlog2-half-17", 4, 4, post_gelu="adalog")  # post-GELU shift: "before" fc2's point
    assert quantize_model(model, x, cfg).passes > 1


@pytest.mark.parametrize("family", ["ibert", "ivit", "fqvit", "mixed"])
@pytest.mark.parametrize("kind", KINDS)
def test_integer_kernels_fit_in_one_pass(tiny, kind, family, monkeypatch, single_thread):
    """An integer softmax reads q·kᵀ's integer product through ``QuantMatMul.products``, not the matmul's
    forward: the products run the matmul's pre-hooks, so one forward fits its points before they are read
    and gives the model of the consumer passes (without that, the attention map was fitted on a float
    softmax)."""
    from vitquant.calibration.pipeline import _Fitter
    from vitquant.nonlinear import NonlinearConfig

    model, x = tiny.model(kind), tiny.images(6, kind)
    cfg = qc.repq_vit_qconfig(8, 8, "bitlog2-half-17", attn_bits=4).with_nonlinear(NonlinearConfig.everywhere(family))
    one = quantize_model(model, x, cfg)
    assert one.passes == 1
    monkeypatch.setattr(_Fitter, "fits_in_one_pass", lambda self: False)
    _same_model(tiny, kind, one, quantize_model(model, x, cfg))
