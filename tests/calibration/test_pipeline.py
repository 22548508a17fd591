"""The calibration pipeline on tiny random-weight ViT and Swin models: every scheme, reports, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vitquant import qconfig
from vitquant.calibration import check_images, fingerprint_points, prepare, quantize_model
from vitquant.errors import DataError, NumericalError
from vitquant.nn import Mode, QuantPoint, quant_points, set_mode
from vitquant.nn.linear import WeightQuantMixin
from vitquant.qconfig import ATTENTION_SCHEMES, repq_vit_qconfig
from vitquant.quantizers import summarize_state

KINDS = ("vit", "swin")


def _expected_names(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(every quantization point, every quantized weight) of ``model`` prepared."""
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    points = {name for name, _ in quant_points(prepared)}
    weights = {f"{n}.weight" for n, m in prepared.named_modules() if isinstance(m, WeightQuantMixin)}
    return points, weights


@pytest.mark.parametrize("scheme", ATTENTION_SCHEMES)
@pytest.mark.parametrize("kind", KINDS)
def test_w4a4_every_attention_scheme(tiny, kind, scheme):
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    result = quantize_model(model, x, repq_vit_qconfig(4, 4, scheme))
    qmodel = result.model

    with torch.no_grad():
        logits = qmodel(tiny.images(4, kind, seed=5))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    assert {m.mode for m in qmodel.modules() if isinstance(m, (QuantPoint, WeightQuantMixin))} == {Mode.QUANTIZE}

    # the report covers every point and every weight, once
    points, weights = _expected_names(model)
    names = [p.name for p in result.points]
    assert len(names) == len(set(names))
    assert set(names) == points | weights
    weight_roles = (qconfig.WEIGHT, qconfig.PATCH_EMBED_WEIGHT, qconfig.HEAD_WEIGHT)
    assert {p.name for p in result.points if p.role in weight_roles} == weights

    for report in result.points:
        assert report.levels_used is not None, report.name
        assert 1 <= report.levels_used <= report.max_levels, report
        if report.role not in (qconfig.POST_SOFTMAX,):
            assert report.max_levels == 2**report.bits, report
        expected_bits = 8 if report.role == qconfig.PATCH_EMBED_INPUT else 4
        assert report.bits == expected_bits, report
    for name, point in quant_points(qmodel):  # one count per level, and only real codes counted
        assert point.level_counts.shape == (point.quantizer.max_levels,), name

    softmax = [p for p in result.points if p.role == qconfig.POST_SOFTMAX]
    n_attn = {"vit": 2, "swin": 4}[kind]
    assert len(softmax) == n_attn
    expected_levels = 17 if scheme.endswith("17") else 16
    assert {p.max_levels for p in softmax} == {expected_levels}
    assert {p.quantizer for p in softmax} == {qconfig.attention_spec(scheme, 4).name}
    summary = result.role_summary(qconfig.POST_SOFTMAX)
    assert summary["points"] == n_attn and summary["max_levels"] == expected_levels
    assert 1 <= summary["levels_used_min"] <= summary["levels_used_max"] <= expected_levels
    # the report is plain data
    as_dict = result.to_dict()
    assert as_dict["images"] == 8 and as_dict["attention_levels"] == summary
    assert len(as_dict["points"]) == len(result.points)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(tiny, kind):
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    probe = tiny.images(4, kind, seed=6)
    qc = repq_vit_qconfig(4, 4, "bitlog2-half-17")
    runs = []
    for _ in range(2):
        result = quantize_model(model, x.clone(), qc)
        with torch.no_grad():
            timeless = [{k: v for k, v in p.to_dict().items() if k != "search_seconds"} for p in result.points]
            runs.append((result.model(probe), timeless))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize("kind", KINDS)
def test_input_model_untouched(tiny, kind):
    model = tiny.model(kind)
    saved = copy.deepcopy(model)
    x = tiny.images(8, kind)
    x_saved = x.clone()
    result = quantize_model(model, x, repq_vit_qconfig(4, 4))
    assert result.model is not model
    assert torch.equal(x, x_saved)
    assert not any(isinstance(m, (QuantPoint, WeightQuantMixin)) for m in model.modules())
    for (name, p), (_, q) in zip(model.named_parameters(), saved.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), (_, c) in zip(model.named_buffers(), saved.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    # no parameter storage shared between the float and the quantized model
    float_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not float_ptrs & {p.data_ptr() for p in result.model.parameters()}


def test_w8a8_top1_agrees_with_float(tiny):
    model = tiny.model("vit")
    result = quantize_model(model, tiny.images(8, "vit"), repq_vit_qconfig(8, 8, "sqrt2-17"))
    x = tiny.images(32, "vit", seed=7)
    with torch.no_grad():
        agree = (result.model(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.90  # measured 30/32 (the log-sqrt2 attention map dominates the error)


def test_stage_timings_and_counts(tiny):
    result = quantize_model(tiny.model("vit"), tiny.images(3, "vit"), repq_vit_qconfig(4, 4))
    assert result.images == 3
    assert set(result.stage_seconds) == {"weights", "activations", "reparameterization", "level_count"}
    assert all(t >= 0 for t in result.stage_seconds.values()) and result.seconds > 0
    assert result.reparameterized == 4


def test_quantized_model_deep_copies_and_switches_back_to_float(tiny):
    model = tiny.model("swin")
    x = tiny.images(4, "swin")
    result = quantize_model(model, x, repq_vit_qconfig(4, 4, "sqrt2-16"))
    clone = copy.deepcopy(result.model)
    with torch.no_grad():
        assert torch.equal(clone(x), result.model(x))
        set_mode(clone, Mode.FLOAT)  # float function of the reparameterized copy == the original
        ref = model(x)
        assert (clone(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(0, 3, 32, 32),
        torch.zeros(3, 32, 32),
        torch.zeros(2, 1, 32, 32),
        torch.zeros(2, 4, 32, 32),
        [torch.zeros(3, 32, 32)],
    ],
    ids=["empty", "3d", "1-channel", "4-channel", "list"],
)
def test_bad_images_are_data_errors(tiny, images):
    with pytest.raises(DataError):
        quantize_model(tiny.model("vit"), images, repq_vit_qconfig(4, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_numerical_errors(tiny, bad):
    x = tiny.images(4, "vit")
    x[1, 2, 3, 4] = bad
    with pytest.raises(NumericalError):
        quantize_model(tiny.model("vit"), x, repq_vit_qconfig(4, 4))


def test_integer_images_rejected():
    with pytest.raises((DataError, NumericalError)):
        check_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_nan_activation_names_the_point(tiny):
    """A NaN LayerNorm offset (not a quantized weight) poisons the activations entering qkv."""
    model = tiny.model("vit")
    with torch.no_grad():
        model.blocks[1].norm1.bias[3] = float("nan")
    with pytest.raises(NumericalError, match=r"blocks\.1\.attn\.qkv\.input_quant"):
        quantize_model(model, tiny.images(4, "vit"), repq_vit_qconfig(4, 4))


def test_nan_weight_names_the_layer(tiny):
    model = tiny.model("swin")
    with torch.no_grad():
        model.layers[0].blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"layers\.0\.blocks\.1\.mlp\.fc1\.weight"):
        quantize_model(model, tiny.images(4, "swin"), repq_vit_qconfig(4, 4))


def test_nan_in_calibration_forward_names_a_point(tiny):
    """NaN appearing mid-network (a poisoned position embedding) is caught at the first point it reaches."""
    model = tiny.model("vit")
    with torch.no_grad():
        model.pos_embed[0, 2, 5] = float("nan")
    with pytest.raises(NumericalError, match=r"blocks\.0\.attn\.qkv\.input_quant"):
        quantize_model(model, tiny.images(4, "vit"), repq_vit_qconfig(4, 4))


def test_point_reports_carry_the_fitted_parameters(tiny):
    """Every point's ``params`` summarises the quantizer it was fitted with (valid JSON, no NaN)."""
    result = quantize_model(tiny.model("vit"), tiny.images(8, "vit"), repq_vit_qconfig(4, 4, "sqrt2-17"))
    quantizers = {name: quantizer for name, quantizer, _ in fingerprint_points(result.model)}
    assert [p.name for p in result.points] == list(quantizers)
    for report in result.points:
        assert report.params == summarize_state(quantizers[report.name].state()), report.name
    kinds = {p.role: p.params["kind"] for p in result.points}
    assert kinds[qconfig.WEIGHT] == "uniform" and kinds[qconfig.POST_SOFTMAX] == "log_sqrt2"
    points = json.loads(json.dumps(result.to_dict()["points"], allow_nan=False))
    assert [p["params"] for p in points] == [p.params for p in result.points]


@pytest.mark.parametrize("kind", KINDS)
def test_ends_at_8_bits_and_the_rest_at_3(tiny, kind):
    """``with_ends(8)``: the patch-embedding weight and the head's weight and input at 8 bits (256
    levels), every other weight and activation as the recipe says; unset, the ends are like the rest."""
    model = tiny.model(kind)
    x = tiny.images(8, kind)
    base = repq_vit_qconfig(3, 3, "bitlog2-single-17")
    plain = {p.name: p for p in quantize_model(model, x, base).points}
    ends = {p.name: p for p in quantize_model(model, x, base.with_ends(8)).points}
    assert plain.keys() == ends.keys()
    head = "head.fc" if kind == "swin" else "head"
    expected = {"patch_embed.proj.weight": qconfig.PATCH_EMBED_WEIGHT, f"{head}.weight": qconfig.HEAD_WEIGHT,
                f"{head}.input_quant": qconfig.HEAD_INPUT}
    for name, report in ends.items():
        assert report.role == plain[name].role
        if name in expected:
            assert report.role == expected[name] and plain[name].bits == 3, report
            assert report.bits == 8 and report.max_levels == 256 and 1 <= report.levels_used <= 256, report
        else:
            assert report.bits == plain[name].bits and report.max_levels == plain[name].max_levels, report
