"""AdaLog's calibration options of the shared pipeline: a point scored on its own input, the
layer-float reference, weights initialised by their search, weight/input alternation, and the search
of a folded post-LayerNorm input (QConfig.reference / weight_rounds / weight_init /
refit_after_reparam, QuantSpec.objective)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from vitquant import qconfig as qc
from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError
from vitquant.nn import Mode, set_mode
from vitquant.quantizers import UniformSpec
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.recipes import build_qconfig
from vitquant.search.context import FitContext
from vitquant.search.grid_search import SearchSettings
from vitquant.search.registry import fit_point

SMALL = SearchSettings(budget=16, topk=4, steps=2, rounds=1)


def _adalog(**changes) -> qc.QConfig:
    return replace(build_qconfig("adalog", 4, 4), search=SMALL, **changes)


def test_objective_must_be_known():
    with pytest.raises(ConfigError, match="objective"):
        UniformSpec(bits=4, objective="nope")


def test_point_scored_on_its_own_input(tiny, single_thread):
    """objective="input": each channel of a post-LayerNorm input keeps the candidate with the least
    reconstruction error of its own values, the same as the search with no consumer at all."""
    spec = UniformSpec(bits=4, granularity="channel", search="fpcs", objective="input")
    cfg = replace(_adalog(), reparam=False)  # the per-channel quantizer stays as fitted
    cfg = cfg.with_roles(**{qc.POST_LAYERNORM: spec, qc.POST_GELU: UniformSpec(bits=4)})
    images = tiny.images(4, "vit")
    result = quantize_model(tiny.model("vit"), images, cfg)
    point = result.model.blocks[0].attn.qkv.input_quant
    seen = []
    handle = point.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        result.model(images)
    handle.remove()
    expected, evaluations = fit_point(spec, FitContext(where="x", inputs=seen[0], axis=-1), SMALL)
    assert evaluations > 0
    assert torch.equal(point.quantizer.scale, expected.scale)
    assert torch.equal(point.quantizer.zero_point, expected.zero_point)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_alternation_options_calibrate(tiny, kind, single_thread):
    model = tiny.model(kind)
    images = tiny.images(6, kind)
    base = quantize_model(copy.deepcopy(model), images, _adalog())
    cfg = _adalog(reference="layer", weight_rounds=2, weight_init="search", refit_after_reparam=True)
    cfg = cfg.with_roles(**{qc.POST_LAYERNORM: UniformSpec(bits=4, granularity="channel", search="fpcs", objective="input")})
    result = quantize_model(copy.deepcopy(model), images, cfg)
    x = tiny.images(3, kind, seed=4)
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()
        set_mode(result.model, Mode.FLOAT)  # every rewrite stays exact in float
        assert torch.allclose(result.model(x), model(x), atol=1e-4, rtol=1e-4)
    evaluations = {p.name: p.evaluations for p in base.points}
    for report in result.points:
        if report.role in (qc.WEIGHT, qc.POST_LAYERNORM):  # searched more often than by default
            assert report.evaluations > evaluations[report.name], report
        if report.role == qc.POST_LAYERNORM:  # folded into the LayerNorm: one quantizer remains
            assert report.quantizer == "uniform (per-tensor after reparam)"
    folded = [m.input_quant.quantizer for n, m in result.model.named_modules() if n.endswith("fc1")]
    assert folded and all(isinstance(q, UniformQuantizer) and not q.per_channel for q in folded)


def test_weight_scored_on_its_own_error(tiny, single_thread):
    """A weight spec with objective="input" (and weight_init="search") keeps, per output channel, the
    candidate with the least error of its own values, the same as the search with no consumer."""
    cfg = _adalog(weight_init="search")
    spec = replace(cfg.specs[qc.WEIGHT], objective="input")
    result = quantize_model(tiny.model("vit"), tiny.images(4, "vit"), cfg.with_roles(**{qc.WEIGHT: spec}))
    for name in ("head", "blocks.0.mlp.fc2"):
        layer = result.model.get_submodule(name)
        expected, _ = fit_point(spec, FitContext(where="w", inputs=layer.weight.detach(), axis=0), SMALL)
        assert torch.equal(layer.weight_quantizer.scale, expected.scale), name
        assert torch.equal(layer.weight_quantizer.zero_point, expected.zero_point), name


@pytest.mark.parametrize("inputs", ["parallel", "sequential"])
def test_parallel_inputs_are_the_float_models(tiny, inputs, single_thread):
    """inputs="parallel": a point is fitted on the float model's input of its consumer, whatever the
    points before it do (sequential: on the partly quantized stream)."""
    model = tiny.model("vit")
    images = tiny.images(4, "vit")
    cfg = replace(qc.repq_vit_qconfig(4, 4), reparam=False, inputs=inputs)
    result = quantize_model(copy.deepcopy(model), images, cfg)
    seen = []
    handle = model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    expected = cfg.spec_for("head.input_quant", qc.LINEAR_INPUT).fit(seen[0])
    fitted = result.model.head.input_quant.quantizer
    # (the rewritten attention matches timm's fused one to ~1e-6, not bit for bit)
    same = torch.allclose(fitted.scale, expected.scale, rtol=1e-4) and torch.equal(fitted.zero_point, expected.zero_point)
    assert same == (inputs == "parallel")
