"""NonlinearConfig: defaults, per-layer choices (exact name before pattern), families, errors, plain data;
a QConfig without a non-linear part prepares exactly the points it did before kernels existed."""

from __future__ import annotations

import copy
import json

import pytest
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block

from vitquant.calibration import prepare
from vitquant.errors import ConfigError
from vitquant.kernels import FAMILIES, OPS
from vitquant.nn import quant_points
from vitquant.nn.nonlinear import KERNEL_INPUT_ROLES, QuantNonLinear
from vitquant.nonlinear import CHOICES, RULES, SOFTMAX_OUT_BITS, NonlinearConfig
from vitquant.qconfig import QConfig, repq_vit_qconfig
from vitquant.workflow import QuantizeJob


def test_defaults_are_float():
    cfg = NonlinearConfig()
    assert cfg.is_float
    assert dict(cfg.ops) == {} and dict(cfg.overrides) == {}
    assert cfg.bits is None and cfg.softmax_bits is None and cfg.rule == "sqnr-diff"
    for op in OPS:
        assert cfg.choice_for("blocks.0.norm1", op) == "float"
        assert cfg.families_for("blocks.0.norm1", op) == []
    assert NonlinearConfig.everywhere("float").is_float
    assert NonlinearConfig.everywhere("float") == cfg
    assert CHOICES == ("float", *FAMILIES, "mixed") and RULES == ("sqnr-diff", "output-sqnr")


def test_is_float_sees_overrides():
    assert NonlinearConfig(ops={"gelu": "float"}).is_float
    assert not NonlinearConfig(overrides={"blocks.0.mlp.act": "ivit"}).is_float
    assert not NonlinearConfig(ops={"softmax": "mixed"}).is_float


@pytest.mark.parametrize("choice", [*FAMILIES, "mixed"])
def test_everywhere(choice):
    cfg = NonlinearConfig.everywhere(choice, bits=6, rule="output-sqnr")
    assert dict(cfg.ops) == {**{op: choice for op in OPS}, "residual": "integer"}
    assert dict(cfg.overrides) == {} and cfg.bits == 6 and cfg.rule == "output-sqnr"
    assert not cfg.is_float
    assert all(cfg.choice_for("any.layer", op) == choice for op in OPS)
    assert cfg.integer_residual("blocks.0.add_attn") and cfg.residual_bits == 24


def test_residual_adds_are_float_unless_asked_for():
    assert not NonlinearConfig().integer_residual("blocks.0.add_attn")
    assert not NonlinearConfig(ops={"gelu": "ivit"}).integer_residual("blocks.0.add_mlp")
    cfg = NonlinearConfig(ops={"residual": "integer"}, overrides={"blocks.1.*": "float", "blocks.2.*": "ibert"}, residual_bits=16)
    assert cfg.integer_residual("blocks.0.add_attn") and not cfg.integer_residual("blocks.1.add_mlp")
    assert cfg.integer_residual("blocks.2.add_mlp")  # any kernel family at a layer: integer adds there
    assert cfg.to_dict()["residual_bits"] == 16
    with pytest.raises(ConfigError, match="choose one of float, integer"):
        NonlinearConfig(ops={"residual": "ivit"})
    with pytest.raises(ConfigError, match="choose one of float, ivit"):
        NonlinearConfig(ops={"gelu": "integer"})
    with pytest.raises(ConfigError, match="residual bits"):
        NonlinearConfig(ops={"residual": "integer"}, residual_bits=40)


def test_choice_for_exact_override_before_pattern():
    cfg = NonlinearConfig(
        ops={"gelu": "ivit", "softmax": "ibert"},
        overrides={"blocks.*": "fqvit", "blocks.1.*": "mixed", "blocks.1.mlp.act": "ibert", "norm": "float"},
    )
    assert cfg.choice_for("blocks.1.mlp.act", "gelu") == "ibert"  # exact, though patterns come first
    assert cfg.choice_for("blocks.1.attn.softmax", "softmax") == "fqvit"  # first matching pattern
    assert cfg.choice_for("blocks.0.norm1", "layernorm") == "fqvit"
    assert cfg.choice_for("norm", "layernorm") == "float"
    assert cfg.choice_for("head.act", "gelu") == "ivit"  # no override: the op's choice
    assert cfg.choice_for("layers.0.softmax", "softmax") == "ibert"
    assert cfg.choice_for("stem.norm", "layernorm") == "float"  # op not mentioned: float
    # fnmatch is case-sensitive and anchored
    assert cfg.choice_for("BLOCKS.0.norm1", "layernorm") == "float"
    assert cfg.choice_for("x.blocks.0.norm1", "layernorm") == "float"


def test_families_for():
    fq = NonlinearConfig.everywhere("fqvit")
    assert fq.families_for("blocks.0.mlp.act", "gelu") == []  # FQ-ViT has no GELU: stays float
    assert fq.families_for("blocks.0.attn.softmax", "softmax") == ["fqvit"]
    assert fq.families_for("blocks.0.norm1", "layernorm") == ["fqvit"]
    mixed = NonlinearConfig.everywhere("mixed")
    assert mixed.families_for("a", "gelu") == ["ivit", "ibert"]
    assert mixed.families_for("a", "softmax") == list(FAMILIES)
    assert mixed.families_for("a", "layernorm") == list(FAMILIES)
    assert NonlinearConfig.everywhere("ibert").families_for("a", "gelu") == ["ibert"]
    pinned = NonlinearConfig(ops={"gelu": "mixed"}, overrides={"blocks.0.mlp.act": "ivit"})
    assert pinned.families_for("blocks.0.mlp.act", "gelu") == ["ivit"]
    assert pinned.families_for("blocks.1.mlp.act", "gelu") == ["ivit", "ibert"]
    assert pinned.families_for("blocks.1.norm1", "layernorm") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ops={"relu": "ivit"}), r"unknown non-linear ops \['relu'\]; ops: softmax, gelu, layernorm"),
        (dict(ops={"gelu": "fast"}), r"non-linear choice 'fast' for gelu: choose one of float, ivit, ibert, fqvit, mixed"),
        (dict(overrides={"blocks.*": "exact"}), r"non-linear choice 'exact' for blocks\.\*: choose one of"),
        (dict(rule="best"), r"unknown mixed rule 'best'; choose one of sqnr-diff, output-sqnr"),
        (dict(bits=1), r"non-linear input bits must be between 2 and 16, got 1"),
        (dict(bits=17), r"non-linear input bits must be between 2 and 16, got 17"),
        (dict(softmax_bits=1), r"softmax output bits must be between 2 and 16, got 1"),
        (dict(softmax_bits=24), r"softmax output bits must be between 2 and 16, got 24"),
    ],
)
def test_errors_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NonlinearConfig(**kwargs)


def test_everywhere_errors():
    with pytest.raises(ConfigError, match=r"unknown --nonlinear 'bogus'; choose one of float, ivit, ibert, fqvit, mixed"):
        NonlinearConfig.everywhere("bogus")
    with pytest.raises(ConfigError, match="unknown mixed rule 'bogus'"):
        NonlinearConfig.everywhere("mixed", rule="bogus")
    with pytest.raises(ConfigError, match="between 2 and 16"):
        NonlinearConfig.everywhere("ivit", bits=24)
    for bits in (2, 8, 16):
        assert NonlinearConfig.everywhere("ivit", bits=bits).bits == bits


def test_config_is_immutable_plain_data():
    ops = {"gelu": "ivit"}
    cfg = NonlinearConfig(ops=ops)
    ops["gelu"] = "ibert"  # the caller's dict is copied
    assert cfg.choice_for("a", "gelu") == "ivit"
    with pytest.raises(TypeError):
        cfg.ops["gelu"] = "ibert"  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.bits = 4  # type: ignore[misc]
    assert NonlinearConfig(ops={"gelu": "ivit"}) == cfg


def test_resolved_pins_layers():
    cfg = NonlinearConfig(ops={"gelu": "mixed", "softmax": "mixed"}, overrides={"blocks.1.*": "ibert", "a": "ivit"},
                          bits=6, rule="output-sqnr")
    choices = {"blocks.0.mlp.act": "ivit", "blocks.0.attn.softmax": "fqvit", "a": "ibert"}
    res = cfg.resolved(choices)
    assert dict(res.overrides) == {"blocks.1.*": "ibert", "a": "ibert", "blocks.0.mlp.act": "ivit",
                                   "blocks.0.attn.softmax": "fqvit"}
    assert res.ops == cfg.ops and res.bits == 6 and res.rule == "output-sqnr"
    assert res.families_for("blocks.0.mlp.act", "gelu") == ["ivit"]
    assert res.families_for("blocks.0.attn.softmax", "softmax") == ["fqvit"]
    assert res.families_for("blocks.2.mlp.act", "gelu") == ["ivit", "ibert"]  # not pinned: still mixed
    assert dict(cfg.overrides) == {"blocks.1.*": "ibert", "a": "ivit"}  # the original is unchanged
    with pytest.raises(ConfigError):
        cfg.resolved({"x": "nope"})


def test_to_dict():
    cfg = NonlinearConfig(ops={"gelu": "ivit", "layernorm": "mixed"}, overrides={"norm": "float"}, bits=7,
                          rule="output-sqnr")
    data = cfg.to_dict()
    assert data == {"ops": {"gelu": "ivit", "layernorm": "mixed"}, "overrides": {"norm": "float"}, "bits": 7,
                    "rule": "output-sqnr", "residual_bits": 24, "softmax_bits": None}
    assert type(data["ops"]) is dict and type(data["overrides"]) is dict
    assert json.loads(json.dumps(data)) == data
    assert NonlinearConfig(**data) == cfg


@pytest.mark.parametrize("a_bits", [2, 4, 8])
def test_kernel_inputs_default_to_the_kernels_width(a_bits):
    """The kernel input width no longer follows --a-bits: GELU and LayerNorm take 16-bit integers
    (the symmetric kernel_input format), FQ-ViT's PTF point too; an explicit width is a constraint."""
    nl = QuantizeJob(a_bits=a_bits, nonlinear="ivit", recipe="repq-vit").qconfig().nonlinear
    assert nl.bits is None
    wide = nl.input_spec("uniform")
    assert (wide.kind, wide.bits, wide.max_levels) == ("kernel_input", 16, 2**16)
    assert nl.input_spec("ptf").bits == 16
    assert nl.input_spec("product") is None
    narrow = NonlinearConfig(bits=6).input_spec("uniform")
    assert (narrow.kind, narrow.bits) == ("uniform", 6)
    assert NonlinearConfig(bits=12).input_spec("uniform").kind == "kernel_input"


def test_softmax_output_width():
    """I-ViT's Shiftmax at 16 bits as published (IntSoftmax(16)), I-BERT at 16 too; FQ-ViT keeps its
    4-bit log2 codes; --softmax-bits sets the linear ones."""
    assert SOFTMAX_OUT_BITS == {"ivit": 16, "ibert": 16, "fqvit": 4}
    cfg = NonlinearConfig()
    assert cfg.kernel_options("ivit", "softmax") == {"out_bits": 16}
    assert cfg.kernel_options("ibert", "softmax") == {"out_bits": 16}
    assert cfg.kernel_options("fqvit", "softmax") == {"out_bits": 4}
    assert cfg.kernel_options("ivit", "gelu") == {}
    eight = NonlinearConfig(softmax_bits=8)
    assert eight.kernel_options("ivit", "softmax") == {"out_bits": 8}
    assert eight.kernel_options("fqvit", "softmax") == {"out_bits": 4}
    job = QuantizeJob(nonlinear="ivit", softmax_bits=8, recipe="repq-vit")
    assert job.qconfig().nonlinear.softmax_bits == 8


def test_job_qconfig_nonlinear():
    qc = QuantizeJob(a_bits=4, nonlinear="mixed", mixed_rule="output-sqnr", nonlinear_bits=5).qconfig()
    assert qc.nonlinear == NonlinearConfig.everywhere("mixed", bits=5, rule="output-sqnr")
    assert QuantizeJob().qconfig().nonlinear.is_float


def test_qconfig_carries_nonlinear():
    qc = repq_vit_qconfig(4, 4)
    assert qc.nonlinear == NonlinearConfig() and qc.nonlinear.is_float
    assert QConfig(specs=qc.specs).nonlinear == NonlinearConfig()
    assert qc.to_dict()["nonlinear"] == {"ops": {}, "overrides": {}, "bits": None, "rule": "sqnr-diff", "residual_bits": 24,
                                          "softmax_bits": None}
    mixed = NonlinearConfig.everywhere("mixed", bits=6)
    with_mixed = qc.with_nonlinear(mixed)
    assert with_mixed.nonlinear is mixed and qc.nonlinear.is_float  # a copy
    assert with_mixed.to_dict()["nonlinear"] == mixed.to_dict()
    assert {k: v for k, v in with_mixed.to_dict().items() if k != "nonlinear"} == {
        k: v for k, v in qc.to_dict().items() if k != "nonlinear"}
    json.dumps(with_mixed.to_dict())


def _points(model) -> list[tuple[str, str, str | None]]:
    return [(name, p.role, p.spec.name if p.spec else None) for name, p in quant_points(model)]


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_qconfig_without_nonlinear_prepares_the_same_points(tiny, kind):
    model = tiny.model(kind)
    plain = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    explicit = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4).with_nonlinear(NonlinearConfig()))
    points = _points(plain)
    assert points == _points(explicit)
    assert not any(role in KERNEL_INPUT_ROLES for _, role, _ in points)
    assert not any(".slots." in name for name, _, _ in points)
    modules = [m for m in plain.modules() if isinstance(m, QuantNonLinear)]
    assert modules and all(len(m.slots) == 0 and m.active is None for m in modules)
    assert not any(role == "residual" for _, role, _ in points)  # float residual adds
    # with kernels, the same points plus one per GELU/LayerNorm kernel slot (softmax kernels take the
    # integer q@kᵀ product: no point of their own) and one per residual add, and nothing else changes
    kernels = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4).with_nonlinear(NonlinearConfig.everywhere("ivit")))
    with_slots = _points(kernels)
    residual = [p for p in with_slots if p[1] == "residual"]
    blocks = sum(isinstance(m, (Block, SwinTransformerBlock)) for m in model.modules())
    assert len(residual) == 2 * blocks and all(p[2] == "fixed24" for p in residual)
    assert [p for p in with_slots if ".slots." not in p[0] and p[1] != "residual"] == points
    extra = [p for p in with_slots if ".slots." in p[0]]
    with_points = [m for m in modules if m.op != "softmax"]
    assert len(with_points) < len(modules)
    assert len(extra) == len(with_points) and all(role in KERNEL_INPUT_ROLES for _, role, _ in extra)
