"""QConfig / quantizer specs: scheme names, role specs, overrides, fitting, serialisation."""

from __future__ import annotations

import json

import pytest
import torch

from vitquant import qconfig as qc
from vitquant.errors import ConfigError, NumericalError
from vitquant.qconfig import (
    ATTENTION_SCHEMES,
    ROLES,
    QConfig,
    attention_spec,
    normalize_scheme_name,
    repq_vit_qconfig,
)
from vitquant.quantizers import (
    AdaLogSpec,
    BitLog2Quantizer,
    BitLog2Scheme,
    BitLog2Spec,
    LogSqrt2Quantizer,
    LogSqrt2Spec,
    TwinUniformSpec,
    UniformQuantizer,
    UniformSpec,
    make_spec,
)
from vitquant.quantizers.spec import spec_from_dict
from vitquant.search.grid_search import SearchSettings

pytestmark = pytest.mark.usefixtures("single_thread")


SPELLINGS = {
    "sqrt2-16": ["Sqrt2_16", "sqrt2-16", "SQRT2_16", " sqrt2_16 "],
    "sqrt2-17": ["Sqrt2_17", "sqrt2-17"],
    "bitlog2-single-16": ["BitLog2_Single_16", "bitlog2-single-16", "bitlog2_single-16"],
    "bitlog2-single-17": ["BitLog2_Single_17", "bitlog2-single-17"],
    "bitlog2-half-16": ["BitLog2_Half_16", "bitlog2-half-16"],
    "bitlog2-half-17": ["BitLog2_Half_17", "bitlog2-half-17", "BITLOG2-HALF-17"],
}


def test_six_canonical_schemes():
    assert set(ATTENTION_SCHEMES) == set(SPELLINGS)
    assert len(ATTENTION_SCHEMES) == 6


@pytest.mark.parametrize("canonical", sorted(SPELLINGS))
def test_normalize_scheme_name(canonical):
    for spelling in SPELLINGS[canonical]:
        assert normalize_scheme_name(spelling) == canonical


@pytest.mark.parametrize(
    "bad", ["sqrt2-18", "bitlog2-third-17", "bitlog2-half", "log2-17", "", "sqrt2 17", "bitlog2-half-17-x"]
)
def test_unknown_scheme_name(bad):
    with pytest.raises(ConfigError):
        normalize_scheme_name(bad)
    with pytest.raises(ConfigError):
        attention_spec(bad, 4)


EXPECTED_SPECS = {  # kind, variant, half (None: the format has no such option), name
    "sqrt2-16": ("log_sqrt2", 16, None, "Sqrt2_16"),
    "sqrt2-17": ("log_sqrt2", 17, None, "Sqrt2_17"),
    "bitlog2-single-16": ("bitlog2", 16, False, "BitLog2_Single_16"),
    "bitlog2-single-17": ("bitlog2", 17, False, "BitLog2_Single_17"),
    "bitlog2-half-16": ("bitlog2", 16, True, "BitLog2_Half_16"),
    "bitlog2-half-17": ("bitlog2", 17, True, "BitLog2_Half_17"),
}


@pytest.mark.parametrize("canonical", sorted(EXPECTED_SPECS))
def test_attention_spec(canonical):
    kind, variant, half, name = EXPECTED_SPECS[canonical]
    for spelling in SPELLINGS[canonical]:
        for bits in (3, 4):
            spec = attention_spec(spelling, bits)
            assert type(spec) is (BitLog2Spec if kind == "bitlog2" else LogSqrt2Spec)
            assert (spec.kind, spec.variant, getattr(spec, "half", None), spec.bits) == (kind, variant, half, bits)
            assert spec.name == name
            assert spec.granularity == "tensor"
    if kind == "bitlog2":
        assert attention_spec(canonical, 4).scheme == BitLog2Scheme(half=half, variant=variant, bits=4)


@pytest.mark.parametrize(
    ("spelling", "spec_type", "name"),
    [("adalog", AdaLogSpec, "AdaLog"), ("AdaLog", AdaLogSpec, "AdaLog"),
     ("twin-uniform", TwinUniformSpec, "TwinUniform-softmax"), ("Twin_Uniform", TwinUniformSpec, "TwinUniform-softmax"),
     ("uniform", UniformSpec, "uniform")],
)
def test_attention_spec_other_quantizers(spelling, spec_type, name):
    spec = attention_spec(spelling, 3)
    assert type(spec) is spec_type
    assert (spec.name, spec.bits, spec.granularity) == (name, 3, "tensor")
    if spec_type is TwinUniformSpec:
        assert spec.mode == "softmax"


def test_attention_spec_passes_options():
    spec = attention_spec("sqrt2-17", 4, search="fpcs", metric="cosine")
    assert spec == LogSqrt2Spec(bits=4, variant=17, search="fpcs", metric="cosine")
    assert attention_spec("adalog", 4, search="brute-force").search_name == "brute-force"
    with pytest.raises(ConfigError):
        attention_spec("sqrt2-17", 4, search="no-such-search")


@pytest.mark.parametrize("scheme", ["bitlog2-half-17", "BitLog2_Single_16", "sqrt2-17"])
def test_repq_vit_qconfig_roles(scheme):
    cfg = repq_vit_qconfig(w_bits=3, a_bits=4, attn_scheme=scheme)
    assert set(cfg.specs) == set(ROLES)
    assert cfg.specs[qc.WEIGHT] == UniformSpec(bits=3, granularity="channel")
    assert cfg.specs[qc.PATCH_EMBED_INPUT] == UniformSpec(bits=8)
    assert cfg.specs[qc.POST_LAYERNORM] == UniformSpec(bits=4, granularity="channel")
    assert cfg.specs[qc.POST_SOFTMAX] == attention_spec(scheme, 4)
    for role in (qc.POST_GELU, qc.LINEAR_INPUT, qc.MATMUL_INPUT):
        assert cfg.specs[role] == UniformSpec(bits=4)
    assert cfg.reparam is True
    assert dict(cfg.overrides) == {}


def test_attn_bits_separate_from_a_bits():
    cfg = repq_vit_qconfig(w_bits=4, a_bits=8, attn_scheme="bitlog2-half-17", attn_bits=4)
    assert cfg.specs[qc.POST_SOFTMAX].bits == 4
    assert cfg.specs[qc.MATMUL_INPUT].bits == 8
    assert repq_vit_qconfig(a_bits=6, attn_scheme="sqrt2-16").specs[qc.POST_SOFTMAX].bits == 6


@pytest.mark.parametrize("scheme", ["bitlog2-half-17", "bitlog2-half-16", "bitlog2-single-17", "bitlog2-single-16"])
def test_bitlog2_at_8_bit_mentions_attn_bits(scheme):
    with pytest.raises(ConfigError, match="--attn-bits"):
        repq_vit_qconfig(w_bits=4, a_bits=8, attn_scheme=scheme)
    with pytest.raises(ConfigError, match="--attn-bits"):
        attention_spec(scheme, 8)


def test_sqrt2_at_8_bit_is_fine():
    assert repq_vit_qconfig(a_bits=8, attn_scheme="sqrt2-17").specs[qc.POST_SOFTMAX].bits == 8


def test_spec_for_and_overrides():
    cfg = repq_vit_qconfig()
    assert cfg.spec_for("blocks.0.attn.qkv", qc.WEIGHT) == cfg.specs[qc.WEIGHT]
    special = UniformSpec(bits=8, granularity="channel")
    cfg2 = cfg.with_overrides({"blocks.0.attn.qkv": special})
    assert cfg2.spec_for("blocks.0.attn.qkv", qc.WEIGHT) == special
    assert cfg2.spec_for("blocks.0.attn.qkv", qc.MATMUL_INPUT) == special  # override wins for any role
    assert cfg2.spec_for("blocks.1.attn.qkv", qc.WEIGHT) == cfg.specs[qc.WEIGHT]
    assert cfg.spec_for("blocks.0.attn.qkv", qc.WEIGHT) == cfg.specs[qc.WEIGHT]  # original untouched
    cfg3 = cfg2.with_overrides({"head": UniformSpec(bits=6)})
    assert set(cfg3.overrides) == {"blocks.0.attn.qkv", "head"}
    with pytest.raises(ConfigError):
        cfg.spec_for("x", "no_such_role")


def test_pattern_overrides():
    cfg = repq_vit_qconfig()
    late = UniformSpec(bits=8)
    exact = UniformSpec(bits=6)
    heads = UniformSpec(bits=5, granularity="head")
    cfg2 = cfg.with_overrides({"blocks.11.*": late, "*.attn.qk.*": heads, "blocks.11.mlp.fc2.input_quant": exact})
    assert cfg2.spec_for("blocks.11.attn.proj.input_quant", qc.LINEAR_INPUT) == late
    assert cfg2.spec_for("blocks.11.attn.qkv.weight", qc.WEIGHT) == late  # a pattern matches weights too
    assert cfg2.spec_for("blocks.11.mlp.fc2.input_quant", qc.POST_GELU) == exact  # exact name before patterns
    assert cfg2.spec_for("blocks.11.attn.qk.a_quant", qc.MATMUL_INPUT) == late  # first matching pattern wins
    assert cfg2.spec_for("blocks.3.attn.qk.b_quant", qc.MATMUL_INPUT) == heads
    assert cfg2.spec_for("blocks.1.attn.proj.input_quant", qc.LINEAR_INPUT) == cfg.specs[qc.LINEAR_INPUT]
    assert cfg2.spec_for("blocks.110.attn.proj.input_quant", qc.LINEAR_INPUT) == cfg.specs[qc.LINEAR_INPUT]


def test_with_roles():
    cfg = repq_vit_qconfig()
    gelu = make_spec("adalog", bits=4, search="fpcs")
    cfg2 = cfg.with_roles(post_gelu=gelu)
    assert cfg2.specs[qc.POST_GELU] == gelu
    assert cfg2.spec_for("blocks.0.mlp.fc2.input_quant", qc.POST_GELU) == gelu
    assert cfg.specs[qc.POST_GELU] == UniformSpec(bits=4)  # original untouched
    assert {r: s for r, s in cfg2.specs.items() if r != qc.POST_GELU} == {
        r: s for r, s in cfg.specs.items() if r != qc.POST_GELU}
    with pytest.raises(ConfigError, match="no_such_role"):
        cfg.with_roles(no_such_role=gelu)


@pytest.mark.parametrize(
    "kwargs",
    [{"reference": "nope"}, {"search_images": 0}, {"operand_rounds": 0}, {"weight_rounds": 0}, {"weight_init": "nope"}],
)
def test_qconfig_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        QConfig(specs=repq_vit_qconfig().specs, **kwargs)


def test_qconfig_missing_roles():
    specs = dict(repq_vit_qconfig().specs)
    del specs[qc.POST_GELU]
    with pytest.raises(ConfigError, match="post_gelu"):
        QConfig(specs=specs)


def test_qconfig_specs_read_only():
    cfg = repq_vit_qconfig()
    with pytest.raises(TypeError):
        cfg.specs[qc.WEIGHT] = UniformSpec(bits=2)  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "nope", "bits": 4},
        {"kind": "uniform", "bits": 1},
        {"kind": "uniform", "bits": 9},
        {"kind": "log_sqrt2", "bits": 4, "variant": None},
        {"kind": "log_sqrt2", "bits": 4, "variant": 15},
        {"kind": "bitlog2", "bits": 4, "variant": None, "half": True},
        {"kind": "bitlog2", "bits": 6, "variant": 17, "half": False},
        {"kind": "bitlog2", "bits": 7, "variant": 16, "half": True},
        {"kind": "twin_uniform", "bits": 4, "mode": "tanh"},
        {"kind": "uniform", "bits": 4, "granularity": "row"},
        {"kind": "uniform", "bits": 4, "per_channel": True},  # the old option: unknown now
        {"kind": "uniform", "bits": 4, "variant": 17},  # an option of another format
        {"kind": "uniform", "bits": 4, "search": "nope"},
        {"kind": "adalog", "bits": 4, "metric": "l1"},
    ],
)
def test_quantspec_validation(kwargs):
    kwargs = dict(kwargs)
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError):
        make_spec(kind, **kwargs)


def test_spec_defaults_and_direct_construction():
    assert make_spec("log_sqrt2", bits=4) == LogSqrt2Spec(bits=4, variant=17)  # variant defaults to 17
    assert make_spec("bitlog2", bits=4) == BitLog2Spec(bits=4, variant=17, half=True)
    spec = make_spec("uniform", bits=4)
    assert spec == UniformSpec(bits=4) and spec.granularity == "tensor" and spec.search_name == "percentile"
    with pytest.raises(ConfigError):
        UniformSpec(bits=9)
    with pytest.raises(ConfigError):
        BitLog2Spec(bits=6, variant=17, half=False)
    with pytest.raises(TypeError):  # keyword-only fields
        UniformSpec(4)  # type: ignore[misc]


def test_fit_returns_right_quantizer_type():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 20, generator=gen)
    act = torch.randn(2, 5, 6, generator=gen)
    attn = torch.softmax(torch.randn(2, 10, 10, generator=gen), dim=-1)

    q = UniformSpec(bits=4, granularity="channel").fit(w, axis=0)
    assert isinstance(q, UniformQuantizer) and q.scale.shape == (8, 1)
    q = UniformSpec(bits=4, granularity="channel").fit(act, axis=-1)
    assert isinstance(q, UniformQuantizer) and q.scale.shape == (6,)
    q = UniformSpec(bits=4).fit(act, axis=-1)  # per-tensor spec ignores axis
    assert isinstance(q, UniformQuantizer) and q.scale.shape == ()
    heads = torch.randn(2, 3, 5, 4, generator=gen)  # [B, heads, tokens, head_dim]
    q = UniformSpec(bits=4, granularity="head").fit(heads, axis=1)
    assert isinstance(q, UniformQuantizer) and q.scale.shape == (3, 1, 1)
    q = attention_spec("sqrt2-16", 4).fit(attn)
    assert isinstance(q, LogSqrt2Quantizer) and q.variant == 16 and q.bits == 4
    q = attention_spec("bitlog2-half-17", 3).fit(attn)
    assert isinstance(q, BitLog2Quantizer) and q.scheme == BitLog2Scheme(half=True, variant=17, bits=3)
    q = attention_spec("BitLog2_Single_16", 4).fit(attn)
    assert isinstance(q, BitLog2Quantizer) and q.scheme == BitLog2Scheme(half=False, variant=16, bits=4)


def test_fit_names_where():
    bad = torch.tensor([0.5, float("nan")])
    with pytest.raises(NumericalError, match="blocks.2.attn.softmax"):
        attention_spec("sqrt2-17", 4).fit(bad, where="blocks.2.attn.softmax")
    with pytest.raises(NumericalError, match="Sqrt2_17"):  # default: the spec's name
        attention_spec("sqrt2-17", 4).fit(bad)


def test_to_dict_json_serialisable():
    cfg = repq_vit_qconfig(attn_scheme="bitlog2-single-17").with_overrides({"head": UniformSpec(bits=8)})
    d = cfg.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert back == d
    assert set(back["roles"]) == set(ROLES)
    assert back["roles"]["post_softmax"] == {
        "kind": "bitlog2", "name": "BitLog2_Single_17", "bits": 4, "granularity": "tensor", "search": "percentile",
        "metric": "mse", "objective": "output", "variant": 17, "half": False, "max_levels": 17}
    assert back["roles"]["weight"] == {
        "kind": "uniform", "name": "uniform-per-channel", "bits": 4, "granularity": "channel",
        "search": "percentile", "metric": "mse", "objective": "output", "max_levels": 16}
    assert back["overrides"] == {
        "head": {"kind": "uniform", "name": "uniform", "bits": 8, "granularity": "tensor", "search": "percentile",
                 "metric": "mse", "objective": "output", "max_levels": 256}}
    assert back["reparam"] is True
    assert back["search"] == {"budget": 128, "topk": 16, "steps": 4, "rounds": 3}
    assert (back["search_images"], back["operand_rounds"], back["reference"]) == (4, 1, "local")
    assert (back["weight_rounds"], back["weight_init"], back["refit_after_reparam"]) == (1, "percentile", False)
    # every spec comes back from its dict
    for role, spec in cfg.specs.items():
        assert spec_from_dict(back["roles"][role]) == spec, role
    assert spec_from_dict(back["overrides"]["head"]) == cfg.overrides["head"]


def test_to_dict_search_settings_and_spec_options():
    cfg = QConfig(
        specs={**repq_vit_qconfig().specs, qc.POST_GELU: make_spec("twin_uniform", bits=4, mode="gelu", search="fpcs")},
        search=SearchSettings(budget=64, topk=8, steps=2, rounds=1),
        search_images=2,
        operand_rounds=3,
        reference="layer",
        weight_rounds=3,
        weight_init="search",
        refit_after_reparam=True,
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["roles"]["post_gelu"] == {
        "kind": "twin_uniform", "name": "TwinUniform-gelu", "bits": 4, "granularity": "tensor", "search": "fpcs",
        "metric": "mse", "objective": "output", "mode": "gelu", "max_levels": 16}
    assert d["search"] == {"budget": 64, "topk": 8, "steps": 2, "rounds": 1}
    assert (d["search_images"], d["operand_rounds"], d["reference"]) == (2, 3, "layer")
    assert (d["weight_rounds"], d["weight_init"], d["refit_after_reparam"]) == (3, "search", True)
    assert spec_from_dict(d["roles"]["post_gelu"]) == cfg.specs[qc.POST_GELU]


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("name", ["sqrt2-16", "sqrt2-17", "bitlog2-single-16", "bitlog2-single-17",
                                  "bitlog2-half-16", "bitlog2-half-17"])
def test_spec_max_levels_equals_fitted_quantizer(name, bits):
    spec = attention_spec(name, bits)
    x = torch.softmax(torch.randn(4, 64) * 4, dim=-1)
    assert spec.max_levels == spec.fit(x).max_levels
    assert spec.max_levels == 2**bits + (1 if name.endswith("17") else 0)
