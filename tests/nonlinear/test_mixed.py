"""Mixed per-layer kernel choice: the two rules on synthetic rows, the report, and end to end on tiny
ViT and Swin models (one slot per layer left, the choice pinned as plain data and reproducible)."""

from __future__ import annotations

import json

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.kernels import FAMILIES, kernel_choices
from vitquant.nn.nonlinear import QuantGELU, QuantNonLinear
from vitquant.nonlinear import NonlinearConfig
from vitquant.nonlinear.mixed import NonlinearReport, Sensitivity, choose, kernel_layers
from vitquant.qconfig import repq_vit_qconfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _row(layer: str, family: str, inp: float, out: float, op: str = "softmax") -> Sensitivity:
    return Sensitivity(layer=layer, op=op, family=family, input_asqnr=inp, output_asqnr=out)


# --------------------------------------------------------------------------- choose


def test_sqnr_diff_reads_the_size_of_the_change():
    rows = [_row("a", "ivit", 30.0, 33.0), _row("a", "ibert", 30.0, 29.0), _row("a", "fqvit", 30.0, 20.0)]
    assert [r.diff for r in rows] == [3.0, -1.0, -10.0]
    assert choose(rows, "sqnr-diff") == {"a": "ibert"}  # |-1| < |+3|: a diff of -1 beats +3
    assert choose(rows, "output-sqnr") == {"a": "ivit"}  # the highest output ASQNR


def test_output_sqnr_picks_the_highest_output():
    rows = [_row("a", "ivit", 10.0, 12.0), _row("a", "ibert", 40.0, 35.0), _row("a", "fqvit", 20.0, 21.0)]
    assert choose(rows, "output-sqnr") == {"a": "ibert"}
    assert choose(rows, "sqnr-diff") == {"a": "fqvit"}  # |+1| < |+2| < |-5|


def test_choice_per_layer():
    rows = [
        _row("x", "ivit", 30, 31), _row("x", "ibert", 30, 35),
        _row("y", "ivit", 30, 20, "gelu"), _row("y", "ibert", 30, 29, "gelu"),
        _row("z", "fqvit", 30, 10, "layernorm"),  # a single candidate is chosen whatever its values
    ]
    assert choose(rows, "sqnr-diff") == {"x": "ivit", "y": "ibert", "z": "fqvit"}
    assert choose(rows, "output-sqnr") == {"x": "ibert", "y": "ibert", "z": "fqvit"}
    assert choose([], "sqnr-diff") == {}


@pytest.mark.parametrize("rule", ["sqnr-diff", "output-sqnr"])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_ties_go_to_families_order(rule, order):
    rows = [_row("a", FAMILIES[i], 25.0, 24.0) for i in order]
    assert choose(rows, rule) == {"a": FAMILIES[0]}
    two = [_row("b", FAMILIES[i], 25.0, 26.0) for i in order if i != 0]  # ibert and fqvit tie
    assert choose(two, rule) == {"b": "ibert"}
    # a tie on |diff| with opposite signs is a tie too
    signs = [_row("c", "fqvit", 20.0, 22.0), _row("c", "ibert", 20.0, 18.0)]
    if rule == "sqnr-diff":
        assert choose(signs, rule) == {"c": "ibert"}


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="unknown rule 'best'"):
        choose([_row("a", "ivit", 1, 2), _row("a", "ibert", 1, 3)], "best")


# --------------------------------------------------------------------------- report


def _report() -> NonlinearReport:
    rows = [
        _row("blocks.0.attn.softmax", "ivit", 20.0, 22.5), _row("blocks.0.attn.softmax", "ibert", 20.0, 23.0),
        _row("blocks.0.attn.softmax", "fqvit", 21.0, 19.0),
        _row("blocks.0.mlp.act", "ivit", 33.0, 32.5, "gelu"), _row("blocks.0.mlp.act", "ibert", 33.0, 31.0, "gelu"),
        _row("blocks.0.norm1", "ivit", 47.0, 41.0, "layernorm"), _row("blocks.0.norm1", "ibert", 47.0, 41.5, "layernorm"),
        _row("blocks.0.norm1", "fqvit", 47.0, 42.0, "layernorm"),
        _row("norm", "ivit", 40.0, 38.0, "layernorm"), _row("norm", "ibert", 40.0, 39.0, "layernorm"),
        _row("norm", "fqvit", 40.0, 39.5, "layernorm"),
    ]
    return NonlinearReport("sqnr-diff", rows, choose(rows, "sqnr-diff"))


def test_report_counts():
    report = _report()
    assert report.choices == {"blocks.0.attn.softmax": "fqvit", "blocks.0.mlp.act": "ivit",
                              "blocks.0.norm1": "fqvit", "norm": "fqvit"}
    counts = report.counts()
    assert counts == {"softmax": {"fqvit": 1}, "gelu": {"ivit": 1}, "layernorm": {"fqvit": 2}}
    assert list(counts) == ["softmax", "gelu", "layernorm"]  # OPS order
    assert report.layers() == ["blocks.0.attn.softmax", "blocks.0.mlp.act", "blocks.0.norm1", "norm"]
    only_gelu = NonlinearReport("output-sqnr", report.rows[3:5], {"blocks.0.mlp.act": "ibert"})
    assert only_gelu.counts() == {"gelu": {"ibert": 1}}  # ops without layers are left out


def test_report_table():
    lines = _report().table().splitlines()
    assert lines[0] == "| layer | op | ivit in / out / diff | ibert in / out / diff | fqvit in / out / diff | choice |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert len(lines) == 2 + 4
    assert lines[2] == ("| blocks.0.attn.softmax | softmax | 20.0 / 22.5 / +2.5 | 20.0 / 23.0 / +3.0 | "
                        "21.0 / 19.0 / -2.0 | fqvit |")
    assert lines[3] == "| blocks.0.mlp.act | gelu | 33.0 / 32.5 / -0.5 | 33.0 / 31.0 / -2.0 | — | ivit |"
    assert lines[5].startswith("| norm | layernorm | ") and lines[5].endswith(" | fqvit |")
    # only the families that were measured get columns
    two = NonlinearReport("sqnr-diff", _report().rows[3:5], {"blocks.0.mlp.act": "ivit"}).table().splitlines()
    assert two[0] == "| layer | op | ivit in / out / diff | ibert in / out / diff | choice |"
    assert two[1] == "|---|---|---|---|---|"


def test_report_to_dict():
    report = _report()
    data = report.to_dict()
    assert set(data) == {"rule", "choices", "counts", "layers"}
    assert data["rule"] == "sqnr-diff" and data["choices"] == report.choices and data["counts"] == report.counts()
    assert len(data["layers"]) == len(report.rows)
    first = data["layers"][0]
    assert first == {"layer": "blocks.0.attn.softmax", "op": "softmax", "family": "ivit", "input_asqnr": 20.0,
                     "output_asqnr": 22.5, "sqnr_diff": 2.5}
    assert json.loads(json.dumps(data)) == data


# --------------------------------------------------------------------------- end to end


def _quantize(tiny, kind: str, nonlinear: NonlinearConfig, images: torch.Tensor):
    return quantize_model(tiny.model(kind), images, repq_vit_qconfig(4, 4).with_nonlinear(nonlinear))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("kind", "rule"), [("vit", "sqnr-diff"), ("vit", "output-sqnr"), ("swin", "sqnr-diff")])
def test_mixed_end_to_end(tiny, kind, rule):
    x = tiny.images(8, kind)
    probe = tiny.images(4, kind, seed=7)
    cfg = NonlinearConfig.everywhere("mixed", bits=8, rule=rule)
    result = _quantize(tiny, kind, cfg, x)
    report = result.nonlinear
    assert report is not None and report.rule == rule
    qmodel = result.model
    modules = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantNonLinear)}
    layers = kernel_layers(qmodel)
    assert list(layers) == list(modules)  # every non-linear module runs a kernel
    assert report.layers() == list(modules)
    n_attn = {"vit": 2, "swin": 4}[kind]
    assert sum(m.op == "softmax" for m in modules.values()) == n_attn

    # one row per (layer, family that implements the op), finite values
    for name, module in modules.items():
        families = [r.family for r in report.rows if r.layer == name]
        assert families == kernel_choices(module.op), name
        assert {r.op for r in report.rows if r.layer == name} == {module.op}
    assert all(torch.isfinite(torch.tensor([r.input_asqnr, r.output_asqnr])).all() for r in report.rows)
    assert len({(r.layer, r.family) for r in report.rows}) == len(report.rows)

    # the rule's choice is what runs: exactly one slot per layer, active
    assert report.choices == choose(report.rows, rule)
    for name, module in modules.items():
        assert list(module.slots) == [report.choices[name]] and module.active == report.choices[name], name
    counts = report.counts()
    for op in ("softmax", "gelu", "layernorm"):
        assert sum(counts[op].values()) == sum(m.op == op for m in modules.values())

    # the resolved config names every layer's family: plain data
    resolved = result.qconfig.nonlinear
    assert dict(resolved.overrides) == report.choices
    assert dict(resolved.ops) == dict(cfg.ops) and resolved.rule == rule and resolved.bits == 8
    assert result.qconfig.to_dict()["nonlinear"]["overrides"] == report.choices
    assert result.to_dict()["nonlinear"] == report.to_dict()
    json.dumps(result.to_dict())

    logits = _logits(qmodel, probe)
    assert torch.isfinite(logits).all()
    # quantizing again with the resolved config gives the same model, bit for bit
    again = _quantize(tiny, kind, resolved, x)
    for name, module in kernel_layers(again.model).items():
        assert list(module.slots) == [report.choices[name]] and module.active == report.choices[name]
    assert again.nonlinear.choices == report.choices
    assert again.qconfig.nonlinear == resolved
    assert torch.equal(_logits(again.model, probe), logits)


def test_mixed_choice_differs_from_a_single_family(tiny):
    """Precondition of the reproducibility check above: on the tiny ViT the mixed choice is not one
    family everywhere, so the choice really is per layer."""
    result = _quantize(tiny, "vit", NonlinearConfig.everywhere("mixed", bits=8), tiny.images(8, "vit"))
    assert len(set(result.nonlinear.choices.values())) >= 2


@pytest.mark.parametrize("family", ["ivit", "ibert", "fqvit"])
def test_single_family(tiny, family):
    x = tiny.images(8, "vit")
    probe = tiny.images(4, "vit", seed=8)
    cfg = NonlinearConfig.everywhere(family, bits=8)
    result = _quantize(tiny, "vit", cfg, x)
    qmodel = result.model
    modules = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantNonLinear)}
    gelus = [n for n, m in modules.items() if isinstance(m, QuantGELU)]
    assert gelus
    layers = kernel_layers(qmodel)
    if family == "fqvit":  # no FQ-ViT GELU: those layers stay float
        assert set(layers) == set(modules) - set(gelus)
        assert all(len(modules[n].slots) == 0 and modules[n].active is None for n in gelus)
    else:
        assert set(layers) == set(modules)
    for name, module in layers.items():
        assert list(module.slots) == [family] and module.active == family
    report = result.nonlinear
    assert report is not None and report.choices == {n: family for n in layers}
    assert {r.family for r in report.rows} == {family} and report.layers() == list(layers)
    assert result.qconfig.nonlinear == cfg  # nothing to pin
    if family == "fqvit":
        spec_kinds = {m.slots["fqvit"].input_quant.spec.kind for m in layers.values() if m.op == "layernorm"}
        assert spec_kinds == {"ptf"}
    # the kernels really run: switching them off changes the logits
    logits = _logits(qmodel, probe)
    assert torch.isfinite(logits).all()
    for module in layers.values():
        module.activate(None)
    assert not torch.equal(_logits(qmodel, probe), logits)


def test_default_float_config_has_no_report(tiny):
    x = tiny.images(8, "vit")
    result = _quantize(tiny, "vit", NonlinearConfig(), x)
    assert result.nonlinear is None
    assert result.to_dict()["nonlinear"] is None
    assert kernel_layers(result.model) == {}
    assert "nonlinear_sensitivity" not in result.stage_seconds
    assert result.qconfig.nonlinear.is_float
    # the same as a QConfig that never mentioned the non-linear ops
    plain = quantize_model(tiny.model("vit"), x, repq_vit_qconfig(4, 4))
    probe = tiny.images(4, "vit", seed=9)
    assert torch.equal(_logits(plain.model, probe), _logits(result.model, probe))


def test_mixed_with_adalog_shifted_gelu_keys_layers_by_their_prepared_name(tiny):
    """AdaLog wraps each GELU in a shifted activation (blocks.i.mlp.act -> .act.act); the sensitivity pass,
    the choices and the recalibration still name the layer as prepared, and the choice reaches it."""
    from vitquant.calibration import quantize_model
    from vitquant.nn.nonlinear import QuantGELU
    from vitquant.nonlinear import NonlinearConfig
    from vitquant.recipes import build_qconfig

    model = tiny.model("vit")
    x = tiny.images(4, "vit", seed=3)
    cfg = build_qconfig("adalog", 4, 4).with_nonlinear(NonlinearConfig.everywhere("mixed", 6))
    result = quantize_model(model, x, cfg)
    choices = result.nonlinear.choices
    assert "blocks.0.mlp.act" in choices and not any(k.endswith(".act.act") for k in choices)
    gelus = {m.layer_name: m for m in result.model.modules() if isinstance(m, QuantGELU)}
    assert "blocks.0.mlp.act" in gelus and type(result.model.blocks[0].mlp.act).__name__ != "QuantGELU"  # wrapped
    for name, module in gelus.items():
        assert module.active == choices[name] and list(module.slots) == [choices[name]]
