"""Per-point SQNR of a calibrated tiny ViT (every weight and fitted activation point, checked against a
direct computation; more bits, more dB), the float mode, and the capture of what points see in it."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.evaluation.point_sqnr import capture_inputs, float_mode, point_sqnr, sqnr_db
from vitquant.nn import Mode, quant_points, set_mode
from vitquant.nn.linear import WeightQuantMixin
from vitquant.recipes import build_qconfig

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("signal", "noise", "db"),
    [(100.0, 1.0, 20.0), (1.0, 1.0, 0.0), (1.0, 10.0, -10.0), (2.0, 1.0, 10 * math.log10(2)), (5e9, 5e-3, 120.0)],
)
def test_sqnr_db_of_known_ratios(signal, noise, db):
    assert sqnr_db(signal, noise) == pytest.approx(db, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("signal", "noise"), [(3.0, 0.0), (0.0, 0.0), (0.0, 1.0)])
def test_sqnr_db_without_noise_or_signal_is_none(signal, noise):
    assert sqnr_db(signal, noise) is None


def _direct_sqnr(x: torch.Tensor, q: torch.Tensor) -> float:
    x, q = x.double(), q.double()
    return 10 * math.log10(float((x * x).sum()) / float(((x - q) ** 2).sum()))


@pytest.fixture(scope="module")
def calibrated():
    """The tiny ViT, 4 images, and repq-vit calibrated at W4A4 and at W8A8 on them."""
    torch.manual_seed(0)
    from conftest import images, make_vit

    model, x = make_vit(), images(4, 32, seed=1)
    results = {bits: quantize_model(model, x, build_qconfig("repq-vit", bits, bits)) for bits in (4, 8)}
    return model, x, results


def test_every_weight_then_every_fitted_point_in_model_order(calibrated):
    _, x, results = calibrated
    qmodel = results[4].model
    rows = point_sqnr(qmodel, [x])
    weights = [(f"{n}.weight", m) for n, m in qmodel.named_modules() if isinstance(m, WeightQuantMixin)]
    points = list(quant_points(qmodel))
    assert len(weights) == 10 and len(points) == 18
    assert [r.name for r in rows] == [n for n, _ in weights] + [n for n, _ in points]
    assert [r.role for r in rows] == ["weight"] * len(weights) + [p.role for _, p in points]
    for row, (_, module) in zip(rows, weights):
        assert row.values == module.weight.numel() and row.quantizer == "UniformQuantizer"
    assert all(r.sqnr_db is not None and math.isfinite(r.sqnr_db) for r in rows)
    assert {r.quantizer for r in rows if r.role == "post_softmax"} == {"LogSqrt2Quantizer"}
    assert set(rows[0].to_dict()) == {"name", "role", "quantizer", "sqnr_db", "values"}


def test_point_sqnr_equals_a_direct_computation(calibrated):
    """A weight's SQNR over its own values; an activation point's over what it quantized while the
    quantized model ran (both batches pooled)."""
    _, x, results = calibrated
    qmodel = results[4].model
    rows = {r.name: r for r in point_sqnr(qmodel, [x[:3], x[3:]])}
    fc1 = qmodel.blocks[0].mlp.fc1
    w = fc1.weight.detach()
    assert rows["blocks.0.mlp.fc1.weight"].sqnr_db == pytest.approx(_direct_sqnr(w, fc1.weight_quantizer(w)), rel=1e-9)
    for name in ("blocks.1.mlp.fc2.input_quant", "blocks.0.attn.av.a_quant", "head.input_quant"):
        point = dict(qmodel.named_modules())[name]
        seen: list[torch.Tensor] = []
        hook = point.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
        try:
            with torch.no_grad():
                qmodel(x[:3])
                qmodel(x[3:])
        finally:
            hook.remove()
        x_in = torch.cat([t.reshape(-1) for t in seen])
        assert rows[name].values == x_in.numel()
        assert rows[name].sqnr_db == pytest.approx(_direct_sqnr(x_in, point.quantizer(x_in)), rel=1e-9), name
    assert rows["blocks.0.attn.av.a_quant"].values == 4 * 3 * 17 * 17  # images x heads x tokens x tokens


def test_more_bits_give_a_higher_sqnr(calibrated):
    _, x, results = calibrated
    low, high = ({r.name: r for r in point_sqnr(results[b].model, [x])} for b in (4, 8))
    bits = {bits: {p.name: p.bits for p in results[bits].points} for bits in (4, 8)}
    assert low.keys() == high.keys()
    for name in low:
        if bits[4][name] == bits[8][name]:  # the 8-bit patch-embedding input in both: the same input, fit, SQNR
            assert name == "patch_embed.proj.input_quant"
            assert high[name].sqnr_db == pytest.approx(low[name].sqnr_db, rel=1e-9)
        else:
            assert high[name].sqnr_db > low[name].sqnr_db, name
    weights = [n for n in low if n.endswith(".weight")]
    assert min(high[n].sqnr_db - low[n].sqnr_db for n in weights) > 18  # ~6 dB a bit, 4 bits more


def test_points_in_float_mode_are_left_out(calibrated):
    _, x, results = calibrated
    qmodel = copy.deepcopy(results[4].model)
    dict(qmodel.named_modules())["blocks.0.mlp.fc2.input_quant"].mode = Mode.FLOAT
    names = [r.name for r in point_sqnr(qmodel, [x])]
    assert "blocks.0.mlp.fc2.input_quant" not in names and "blocks.1.mlp.fc2.input_quant" in names


def _modes(model: torch.nn.Module) -> list[Mode]:
    return [m.mode for m in model.modules() if isinstance(getattr(m, "mode", None), Mode)]


def test_float_mode_restores_every_mode_even_on_error(calibrated):
    model, x, results = calibrated
    qmodel = copy.deepcopy(results[4].model)
    dict(qmodel.named_modules())["blocks.1.attn.qkv.input_quant"].mode = Mode.FLOAT  # a mixed set of modes
    before = _modes(qmodel)
    assert set(before) == {Mode.FLOAT, Mode.QUANTIZE}
    with pytest.raises(RuntimeError, match="inside"):
        with float_mode(qmodel):
            assert set(_modes(qmodel)) == {Mode.FLOAT}
            with torch.no_grad():
                inside = qmodel(x)
            raise RuntimeError("inside")
    assert _modes(qmodel) == before
    with torch.no_grad():
        fp = model(x)
    torch.testing.assert_close(inside, fp, rtol=1e-4, atol=1e-4)  # the float function (reparameterized weights)


def test_capture_inputs_equals_the_float_model_input(calibrated):
    model, x, results = calibrated
    qmodel = results[4].model
    names = ["blocks.0.mlp.fc2.input_quant", "blocks.1.attn.av.a_quant"]
    seen = capture_inputs(qmodel, names, [x[:1], x[1:]])
    assert set(_modes(qmodel)) == {Mode.QUANTIZE}  # modes restored

    manual: dict[str, list[torch.Tensor]] = {n: [] for n in names}  # the same points, in float mode by hand
    reference = copy.deepcopy(qmodel)
    set_mode(reference, Mode.FLOAT)
    modules = dict(reference.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, args, _o, n=n: manual[n].append(args[0])) for n in names]
    with torch.no_grad():
        reference(x[:1])
        reference(x[1:])
    for hook in hooks:
        hook.remove()
    for name in names:
        assert torch.equal(seen[name].values, torch.cat([t.reshape(-1) for t in manual[name]])), name
    assert seen["blocks.0.mlp.fc2.input_quant"].shape == (1, 17, 192)  # the first call's shape
    assert seen["blocks.1.attn.av.a_quant"].shape == (1, 3, 17, 17)

    gelu: list[torch.Tensor] = []  # and the original timm model's GELU output feeding fc2
    hook = model.blocks[0].mlp.fc2.register_forward_pre_hook(lambda _m, args: gelu.append(args[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.testing.assert_close(seen["blocks.0.mlp.fc2.input_quant"].values, gelu[0].reshape(-1), rtol=1e-4, atol=1e-5)


def test_capture_inputs_refuses_unknown_names(calibrated):
    _, x, results = calibrated
    with pytest.raises(KeyError, match="blocks.0.nope, blocks.0.mlp.fc2"):
        capture_inputs(results[4].model, ["blocks.0.nope", "blocks.0.mlp.fc2", "head.input_quant"], [x])
