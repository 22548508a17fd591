"""RepQ-ViT post-LayerNorm scale reparameterization: per-channel -> per-tensor, exact in float.

The tiny models have random LayerNorm scales (|γ| in [0.1, 3], some negative) and offsets, so the
per-channel steps differ by an order of magnitude and the folding is far from the identity.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from vitquant.calibration import prepare, quantize_model
from vitquant.errors import ConfigError
from vitquant.models import adapter_for
from vitquant.nn import Mode, set_mode
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer
from vitquant.reparam import (
    ACTIVATION_SHIFT,
    LAYERNORM_SCALE,
    LayerNormScale,
    ReparamSite,
    reparam_for,
    reparameterize_pair,
)

QC8 = repq_vit_qconfig(8, 8, "sqrt2-17")
REL_TOL = 1e-4  # of the logit scale: float32 rounding of the folded parameters only
KINDS = ("vit", "deit_distilled", "swin")
CONST_VALUE = 0.37


def _calibrated(model: nn.Module, x: torch.Tensor, qc=QC8) -> nn.Module:
    """Steps 1-3 of the pipeline (prepare, quantize weights, fit every point) on a copy, without the
    reparameterization; left in FLOAT mode."""
    q = quantize_model(model, x, replace(qc, reparam=False)).model
    set_mode(q, Mode.FLOAT)
    return q


def _layernorm_sites(model: nn.Module) -> list[ReparamSite]:
    """The (LayerNorm, Linear) reparameterization sites of a prepared model."""
    return [s for s in adapter_for(model).reparam_sites(model) if s.kind == LAYERNORM_SCALE]


def _reparameterize(sites: list[ReparamSite]) -> int:
    """Stage 4 of the pipeline (``_Fitter.finish``): apply every "after" reparameterization that applies
    to its site's fitted input point; returns how many sites were rewritten."""
    done = 0
    for site in sites:
        reparam = reparam_for(site)
        if reparam.stage == "after" and reparam.applies(site, site.consumer.input_quant.spec):
            reparam.apply(site)
            done += 1
    return done


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max())


def _assert_state_finite(model: nn.Module) -> None:
    bad = [n for n, t in model.named_parameters() if not torch.isfinite(t).all()]
    bad += [n for n, t in model.named_buffers() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert bad == []


def _set_constant_channels(model: nn.Module) -> list[tuple[nn.LayerNorm, int]]:
    """LayerNorm weight exactly 0 (as two channels of the real DeiT-Tiny) and bias 0.37 on two norms."""
    chosen = [(model.blocks[0].norm1, 5), (model.blocks[1].norm2, 7)]
    with torch.no_grad():
        for norm, c in chosen:
            norm.weight[c] = 0.0
            norm.bias[c] = CONST_VALUE
    return chosen


# ------------------------------------------------------------------------------ the pipeline
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_pipeline_makes_every_post_layernorm_point_per_tensor(tiny, kind):
    model = tiny.model(kind)
    result = quantize_model(model, tiny.images(8, kind), QC8)
    sites = adapter_for(result.model).reparam_sites(result.model)
    pairs = [s for s in sites if s.kind == LAYERNORM_SCALE]
    expected = {"vit": 2 * 2, "swin": 2 * 4 + 1}[kind]  # norm1 + norm2 per block (+ Swin patch merging)
    assert len(pairs) == expected
    assert all(isinstance(p.producer, nn.LayerNorm) for p in pairs)
    assert {s.kind for s in sites} == {LAYERNORM_SCALE, ACTIVATION_SHIFT}
    assert result.reparameterized == expected
    # the post-GELU input is uniform here, so only the LayerNorm folding applies
    assert result.reparameterizations == {LAYERNORM_SCALE: expected}
    for pair in pairs:
        assert isinstance(reparam_for(pair), LayerNormScale) and reparam_for(pair).stage == "after"
        quantizer = pair.consumer.input_quant.quantizer
        assert type(quantizer) is UniformQuantizer, pair.name
        assert not quantizer.per_channel and quantizer.scale.numel() == 1, pair.name
        assert quantizer.bits == 8
        z = float(quantizer.zero_point)
        assert z == round(z), pair.name
        assert float(quantizer.scale) > 0
        # the folded weights were quantized again: the cache holds the new weight's fake-quant
        assert torch.equal(pair.consumer.weight_fq, pair.consumer.weight_quantizer(pair.consumer.weight.detach()))


def test_reparam_off_keeps_per_channel_points(tiny):
    qc = repq_vit_qconfig(8, 8, "sqrt2-17")
    qc = type(qc)(specs=qc.specs, reparam=False)
    result = quantize_model(tiny.model("vit"), tiny.images(8, "vit"), qc)
    assert result.reparameterized == 0 and result.reparameterizations == {}
    for pair in _layernorm_sites(result.model):
        assert pair.consumer.input_quant.quantizer.per_channel


# ------------------------------------------------------------------------- exactness in float
@pytest.mark.parametrize("kind", KINDS)
def test_folding_keeps_the_float_function(tiny, kind):
    model = tiny.model(kind)
    q = _calibrated(model, tiny.images(8, kind))
    x = tiny.images(6, kind, seed=9)  # not the calibration images
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(q(x), ref, atol=1e-5, rtol=0)
    pairs = _layernorm_sites(q)
    gammas = [p.producer.weight.detach().clone() for p in pairs]
    for pair in pairs:
        reparameterize_pair(pair)
    # the folding really moved the parameters (r_c far from 1) ...
    ratios = torch.cat([(g / p.producer.weight.detach()).reshape(-1) for g, p in zip(gammas, pairs)])
    assert float(ratios.max() / ratios.min()) > 3.0
    # ... and left the float function unchanged
    set_mode(q, Mode.FLOAT)
    with torch.no_grad():
        out = q(x)
    assert _max_abs(out - ref) <= REL_TOL * _max_abs(ref), _max_abs(out - ref)


@pytest.mark.parametrize("kind", KINDS)
def test_folding_maps_per_channel_quantized_inputs_onto_per_tensor_ones(tiny, kind):
    """Only the post-LayerNorm points quantized (weights, other points float): logits unchanged.

    End to end the bound is looser than REL_TOL: a value exactly on a rounding tie before the folding
    (seen in DeiT: x·(1/Δ_c) == k + 0.5 in float32) need not be one after it, and that one code moving by
    one step shifts the logits by ~3e-4 of their scale. The per-pair test below is the strict one.
    """
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    q = _calibrated(model, x)
    pairs = _layernorm_sites(q)
    for pair in pairs:
        pair.consumer.input_quant.mode = Mode.QUANTIZE
    with torch.no_grad():
        float_logits = model(x)
        before = q(x)
    assert _max_abs(before - float_logits) > 1e-3  # the per-channel quantizers are really active
    assert _reparameterize(pairs) == len(pairs)
    with torch.no_grad():
        after = q(x)
    assert _max_abs(after - before) <= 20 * REL_TOL * _max_abs(before), _max_abs(after - before)


@pytest.mark.parametrize("kind", KINDS)
def test_folding_preserves_integer_codes_per_pair(tiny, kind):
    """Per pair: the per-tensor codes of the folded LayerNorm output equal the per-channel codes of the
    original one, and the Linear (float weights) gives the same output on the quantized input."""
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    q = _calibrated(model, x)
    pairs = _layernorm_sites(q)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        p.producer.register_forward_hook(lambda mod, inp, out, name=p.name: captured.__setitem__(name, inp[0]))
        for p in pairs
    ]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    old = {
        p.name: (copy.deepcopy(p.producer), copy.deepcopy(p.consumer), p.consumer.input_quant.quantizer) for p in pairs
    }
    assert _reparameterize(pairs) == len(pairs)
    for pair in pairs:
        norm0, linear0, quant0 = old[pair.name]
        quant1 = pair.consumer.input_quant.quantizer
        with torch.no_grad():
            ln0, ln1 = norm0(captured[pair.name]), pair.producer(captured[pair.name])
            codes0, codes1 = quant0.codes(ln0), quant1.codes(ln1)
            # float rounding may flip an exact .5 tie: allow 0.1 % of codes to move by one step
            mismatch = codes0 != codes1
            assert float(mismatch.float().mean()) <= 1e-3, pair.name
            assert int((codes0 - codes1).abs().max()) <= 1, pair.name
            linear0.mode = pair.consumer.mode = Mode.FLOAT
            linear0.input_quant.mode = pair.consumer.input_quant.mode = Mode.QUANTIZE
            y0, y1 = linear0(ln0), pair.consumer(ln1)
            rows = ~mismatch.any(dim=-1)  # tokens whose codes all agree
            assert float(rows.float().mean()) >= 0.95
            err = _max_abs((y1 - y0)[rows])
            assert err <= REL_TOL * _max_abs(y0), (pair.name, err)


# ---------------------------------------------------------------------------- constant channels
@pytest.mark.parametrize("bits", [8, 4])
def test_constant_channel_calibrates_and_folds_exactly(tiny, bits):
    model = tiny.model("vit")
    chosen = _set_constant_channels(model)
    x = tiny.images(8, "vit")
    qc = repq_vit_qconfig(bits, bits, "sqrt2-17")

    # the observer sees the constant: min == max == 0.37 on that channel only
    q = _calibrated(model, x, qc)
    pairs = {p.name: p for p in _layernorm_sites(q)}
    for (norm, c), name in zip(chosen, ("blocks.0.norm1", "blocks.1.norm2")):
        point = pairs[name].consumer.input_quant
        assert float(point.observed_min[c]) == float(point.observed_max[c]) == pytest.approx(CONST_VALUE)
        assert int((point.observed_min == point.observed_max).sum()) == 1

    result = quantize_model(model, x, qc)
    qmodel = result.model
    _assert_state_finite(qmodel)
    assert result.reparameterized == 4

    # float function unchanged by the folding (constant folded into the next bias)
    set_mode(qmodel, Mode.FLOAT)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert _max_abs(out - ref) <= REL_TOL * _max_abs(ref)

    # the constant channel now emits a value on the per-tensor grid (the grid point nearest zero)
    for name, c in (("blocks.0.norm1", 5), ("blocks.1.norm2", 7)):
        pair = next(p for p in _layernorm_sites(qmodel) if p.name == name)
        quantizer = pair.consumer.input_quant.quantizer
        assert not quantizer.per_channel
        with torch.no_grad():
            channel = pair.producer(torch.randn(4, 9, pair.producer.weight.numel()))[..., c]
        g = float(channel[0, 0])
        assert torch.all(channel == g)
        delta, zero = float(quantizer.scale), float(quantizer.zero_point)
        code = g / delta + zero
        assert code == pytest.approx(round(code), abs=1e-4) and 0 <= round(code) <= 2**bits - 1
        assert float(quantizer(torch.tensor(g))) == pytest.approx(g, abs=1e-6)
        grid = (torch.arange(2**bits, dtype=torch.float64) - zero) * delta
        assert abs(g) == pytest.approx(float(grid.abs().min()), abs=1e-6)
    with torch.no_grad():
        logits = qmodel.eval()(x)
    assert torch.isfinite(logits).all()


def test_constant_channel_folding_costs_no_accuracy(tiny):
    """W8A8 with constant channels: folding them (and every other channel) into per-tensor quantizers is
    no worse than keeping the per-channel quantizers without reparameterization."""
    model = tiny.model("vit")
    _set_constant_channels(model)
    x = tiny.images(8, "vit")
    folded = quantize_model(model, x, QC8)
    unfolded = quantize_model(model, x, type(QC8)(specs=QC8.specs, reparam=False))
    assert folded.reparameterized == 4 and unfolded.reparameterized == 0
    with torch.no_grad():
        ref = model(x)
        err_folded = _max_abs(folded.model(x) - ref)
        err_unfolded = _max_abs(unfolded.model(x) - ref)
    # measured 0.87 vs 1.03 (logit scale 7.9): the weights are re-quantized after folding, so the two
    # differ a little either way, but a broken constant channel would blow the error up
    assert err_folded <= 1.5 * err_unfolded


def test_every_channel_constant(tiny):
    """A LayerNorm whose every channel is constant folds without dividing by zero."""
    model = tiny.model("vit")
    norm = model.blocks[0].norm2
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.copy_(torch.linspace(-1.0, 1.0, norm.bias.numel()))
    x = tiny.images(8, "vit")
    q = _calibrated(model, x)
    pair = next(p for p in _layernorm_sites(q) if p.name == "blocks.0.norm2")
    with torch.no_grad():
        ref = q(x)
    reparameterize_pair(pair)
    _assert_state_finite(q)
    with torch.no_grad():
        out = q(x)
    assert _max_abs(out - ref) <= REL_TOL * _max_abs(ref)


@pytest.mark.parametrize("gamma", [1e-3, 1e-4, 1e-5])
def test_near_constant_channel_folding_costs_no_accuracy(tiny, gamma):
    """Like the exact-constant case above, but the channel varies a little (LayerNorm weight gamma).
    Its per-channel zero point is huge (about -2e6 at 1e-5); neither the clamped mean zero point nor
    the near-constant fold may let it degrade the layer (RepQ-ViT's plain mean gave 13x the error)."""
    model = tiny.model("vit")
    with torch.no_grad():
        model.blocks[0].norm1.weight[5] = gamma
        model.blocks[0].norm1.bias[5] = CONST_VALUE
    x = tiny.images(8, "vit")
    folded = quantize_model(model, x, QC8)
    unfolded = quantize_model(model, x, type(QC8)(specs=QC8.specs, reparam=False))
    with torch.no_grad():
        ref = model(x)
        err_folded = _max_abs(folded.model(x) - ref)
        err_unfolded = _max_abs(unfolded.model(x) - ref)
    assert err_folded <= 1.5 * err_unfolded, (err_folded, err_unfolded)


# ------------------------------------------------------------------------------ bad input
def test_reparameterize_pair_needs_a_calibrated_per_channel_point(tiny):
    q = prepare(copy.deepcopy(tiny.model("vit")), QC8)
    pair = _layernorm_sites(q)[0]
    point = pair.consumer.input_quant
    with pytest.raises(ConfigError, match=pair.name):
        reparameterize_pair(pair)  # not calibrated
    point.set_quantizer(UniformQuantizer(8, torch.tensor(0.1), torch.tensor(3.0)))
    with pytest.raises(ConfigError, match="per-channel"):
        reparameterize_pair(pair)
    # the pipeline skips it, not an error: the folding does not apply to a per-tensor quantizer
    assert not reparam_for(pair).applies(pair, point.spec)
    assert _reparameterize([pair]) == 0
    # a per-channel quantizer installed without the observed range (which the pipeline records)
    channels = pair.producer.weight.numel()
    point.set_quantizer(UniformQuantizer(8, torch.full((channels,), 0.1), torch.full((channels,), 3.0)))
    assert reparam_for(pair).applies(pair, point.spec)
    with pytest.raises(ConfigError, match="range was not recorded"):
        reparameterize_pair(pair)


def test_swin_with_padded_windows_stays_exact():
    """At 84x84 input stage 0 has 21x21 tokens (whole 7x7 windows) and stage 1 11x11 tokens, zero-padded
    to 14x14: the stage-1 blocks keep a per-channel qkv point (no folding), stage 0 is folded, and the
    float function is unchanged."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=84, embed_dim=24, depths=(2, 2),
        num_heads=(1, 2), window_size=7, num_classes=10,
    ).eval()
    x = torch.randn(4, 3, 84, 84)
    result = quantize_model(model, x, QC8)
    qkv_points = [p for n, p in result.model.named_modules() if n.endswith("attn.qkv.input_quant")]
    per_channel = [isinstance(p.quantizer, UniformQuantizer) and p.quantizer.per_channel for p in qkv_points]
    assert per_channel == [False, False, True, True]
    set_mode(result.model, Mode.FLOAT)
    with torch.no_grad():
        ref, out = model(x), result.model(x)
    assert _max_abs(out - ref) <= REL_TOL * _max_abs(ref)
