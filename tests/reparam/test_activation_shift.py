"""AdaLog's post-GELU shift: exact fold into fc2's bias, applied only for non-negative formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitquant import qconfig as qc
from vitquant.calibration import prepare
from vitquant.errors import ConfigError
from vitquant.models.adapters import adapter_for
from vitquant.nn import Mode
from vitquant.nn.shift import ShiftedActivation
from vitquant.quantizers import AdaLogSpec, UniformSpec, make_spec
from vitquant.reparam import ACTIVATION_SHIFT, GELU_MIN_ABS, reparam_for


def test_gelu_min_constant():
    """The published constant (AdaLog, PTQ4ViT) is within 4e-8 of -min GELU and not below it, so
    GELU + c is never negative."""
    x = torch.linspace(-1.5, 0, 300_001, dtype=torch.float64)
    lowest = -float(nn.functional.gelu(x).min())
    assert 0 <= GELU_MIN_ABS - lowest < 4e-8


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_shift_is_exact_with_quantized_weights(tiny, kind):
    model = prepare(tiny.model(kind), qc.repq_vit_qconfig())
    sites = [s for s in adapter_for(model).reparam_sites(model) if s.kind == ACTIVATION_SHIFT]
    assert sites and all(isinstance(s.producer.act, nn.GELU) for s in sites)
    for site in sites:
        site.consumer.quantize_weight()
        site.consumer.mode = Mode.QUANTIZE  # the fold uses the de-quantized weight
    x = tiny.images(2, kind)
    with torch.no_grad():
        before = model(x)
        for site in sites:
            reparam_for(site).apply(site)
        after = model(x)
    assert all(isinstance(s.producer.act, ShiftedActivation) for s in sites)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-5)


def test_fc2_input_becomes_non_negative(tiny):
    model = prepare(tiny.model("vit"), qc.repq_vit_qconfig())
    site = next(s for s in adapter_for(model).reparam_sites(model) if s.kind == ACTIVATION_SHIFT)
    reparam_for(site).apply(site)
    seen = []
    site.consumer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(tiny.images(2, "vit"))
    assert float(seen[0].min()) >= -1e-6


def test_applies_only_to_non_negative_formats(tiny):
    model = prepare(tiny.model("vit"), qc.repq_vit_qconfig())
    site = next(s for s in adapter_for(model).reparam_sites(model) if s.kind == ACTIVATION_SHIFT)
    shift = reparam_for(site)
    assert shift.stage == "before"
    assert shift.applies(site, AdaLogSpec(bits=4))
    assert shift.applies(site, qc.attention_spec("sqrt2-17", 4))
    assert not shift.applies(site, UniformSpec(bits=4))
    assert not shift.applies(site, make_spec("twin_uniform", bits=4, mode="gelu"))


def test_shift_refuses_other_activations(tiny):
    model = prepare(tiny.model("vit"), qc.repq_vit_qconfig())
    site = next(s for s in adapter_for(model).reparam_sites(model) if s.kind == ACTIVATION_SHIFT)
    site.producer.act = nn.ReLU()
    with pytest.raises(ConfigError, match="GELU"):
        reparam_for(site).apply(site)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_shift_stays_exact_when_the_weight_quantizer_is_replaced(tiny, kind):
    """The weight search (FPCS) installs a new weight quantizer after the shift was applied: the
    shifted layer must still equal the unshifted one with that same weight, and so must a
    weight-search candidate passed to ``consume_weight``."""
    model = prepare(tiny.model(kind), qc.repq_vit_qconfig())
    shifted = prepare(tiny.model(kind), qc.repq_vit_qconfig())
    pairs = [
        (a.consumer, b)
        for a, b in zip(
            [s for s in adapter_for(model).reparam_sites(model) if s.kind == ACTIVATION_SHIFT],
            [s for s in adapter_for(shifted).reparam_sites(shifted) if s.kind == ACTIVATION_SHIFT],
        )
    ]
    assert pairs
    for plain, site in pairs:
        for layer in (plain, site.consumer):
            layer.quantize_weight()  # the percentile weight of the recipe, at 4 bit
            layer.mode = Mode.QUANTIZE
        reparam_for(site).apply(site)
        other = UniformSpec(bits=2, granularity="channel")  # another weight quantizer, installed later
        for layer in (plain, site.consumer):
            layer.set_weight_quantizer(other.fit(layer.weight, axis=0, where="w"))
    x = tiny.images(2, kind)
    with torch.no_grad():
        assert torch.allclose(model(x), shifted(x), atol=1e-4, rtol=1e-5)
        plain, site = pairs[0]
        g = torch.rand(3, 5, plain.in_features)
        candidate = plain.weight * 0.9
        assert torch.allclose(
            plain.consume_weight(g, candidate),
            site.consumer.consume_weight(g + GELU_MIN_ABS, candidate),
            atol=1e-5,
        )
