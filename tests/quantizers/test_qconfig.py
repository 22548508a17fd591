"""QConfig / QuantSpec: scheme names, role specs, overrides, fitting, serialisation."""

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
    QuantSpec,
    attention_spec,
    normalize_scheme_name,
    repq_vit_qconfig,
)
from vitquant.quantizers import BitLog2Quantizer, BitLog2Scheme, LogSqrt2Quantizer, UniformQuantizer

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


EXPECTED_SPECS = {
    "sqrt2-16": ("log_sqrt2", 16, False, "Sqrt2_16"),
    "sqrt2-17": ("log_sqrt2", 17, False, "Sqrt2_17"),
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
            assert (spec.kind, spec.variant, spec.half, spec.bits) == (kind, variant, half, bits)
            assert spec.name == name
            assert not spec.per_channel
    if kind == "bitlog2":
        assert attention_spec(canonical, 4).bitlog2_scheme() == BitLog2Scheme(half=half, variant=variant, bits=4)


@pytest.mark.parametrize("scheme", ["bitlog2-half-17", "BitLog2_Single_16", "sqrt2-17"])
def test_repq_vit_qconfig_roles(scheme):
    cfg = repq_vit_qconfig(w_bits=3, a_bits=4, attn_scheme=scheme)
    assert set(cfg.specs) == set(ROLES)
    assert cfg.specs[qc.WEIGHT] == QuantSpec("uniform", 3, per_channel=True)
    assert cfg.specs[qc.PATCH_EMBED_INPUT] == QuantSpec("uniform", 8)
    assert cfg.specs[qc.POST_LAYERNORM] == QuantSpec("uniform", 4, per_channel=True)
    assert cfg.specs[qc.POST_SOFTMAX] == attention_spec(scheme, 4)
    for role in (qc.POST_GELU, qc.LINEAR_INPUT, qc.MATMUL_INPUT):
        assert cfg.specs[role] == QuantSpec("uniform", 4)
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
    special = QuantSpec("uniform", 8, per_channel=True)
    cfg2 = cfg.with_overrides({"blocks.0.attn.qkv": special})
    assert cfg2.spec_for("blocks.0.attn.qkv", qc.WEIGHT) == special
    assert cfg2.spec_for("blocks.0.attn.qkv", qc.MATMUL_INPUT) == special  # override wins for any role
    assert cfg2.spec_for("blocks.1.attn.qkv", qc.WEIGHT) == cfg.specs[qc.WEIGHT]
    assert cfg.spec_for("blocks.0.attn.qkv", qc.WEIGHT) == cfg.specs[qc.WEIGHT]  # original untouched
    cfg3 = cfg2.with_overrides({"head": QuantSpec("uniform", 6)})
    assert set(cfg3.overrides) == {"blocks.0.attn.qkv", "head"}
    with pytest.raises(ConfigError):
        cfg.spec_for("x", "no_such_role")


def test_qconfig_missing_roles():
    specs = dict(repq_vit_qconfig().specs)
    del specs[qc.POST_GELU]
    with pytest.raises(ConfigError, match="post_gelu"):
        QConfig(specs=specs)


def test_qconfig_specs_read_only():
    cfg = repq_vit_qconfig()
    with pytest.raises(TypeError):
        cfg.specs[qc.WEIGHT] = QuantSpec("uniform", 2)  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "nope", "bits": 4},
        {"kind": "uniform", "bits": 1},
        {"kind": "uniform", "bits": 9},
        {"kind": "log_sqrt2", "bits": 4},
        {"kind": "log_sqrt2", "bits": 4, "variant": 15},
        {"kind": "bitlog2", "bits": 4, "variant": None, "half": True},
        {"kind": "bitlog2", "bits": 6, "variant": 17, "half": False},
        {"kind": "bitlog2", "bits": 7, "variant": 16, "half": True},
    ],
)
def test_quantspec_validation(kwargs):
    with pytest.raises(ConfigError):
        QuantSpec(**kwargs)


def test_fit_returns_right_quantizer_type():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 20, generator=gen)
    act = torch.randn(2, 5, 6, generator=gen)
    attn = torch.softmax(torch.randn(2, 10, 10, generator=gen), dim=-1)

    q = QuantSpec("uniform", 4, per_channel=True).fit(w, channel_dim=0)
    assert isinstance(q, UniformQuantizer) and q.scale.shape == (8, 1)
    q = QuantSpec("uniform", 4, per_channel=True).fit(act, channel_dim=-1)
    assert isinstance(q, UniformQuantizer) and q.scale.shape == (6,)
    q = QuantSpec("uniform", 4).fit(act, channel_dim=-1)  # per-tensor spec ignores channel_dim
    assert isinstance(q, UniformQuantizer) and q.scale.shape == ()
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
    cfg = repq_vit_qconfig(attn_scheme="bitlog2-single-17").with_overrides({"head": QuantSpec("uniform", 8)})
    d = cfg.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert back == d
    assert set(back["roles"]) == set(ROLES)
    assert back["roles"]["post_softmax"]["name"] == "BitLog2_Single_17"
    assert back["roles"]["post_softmax"]["kind"] == "bitlog2"
    assert back["roles"]["weight"] == {
        "kind": "uniform", "name": "uniform-per-channel", "bits": 4, "per_channel": True, "max_levels": 16}
    assert back["roles"]["post_softmax"]["max_levels"] == 17
    assert back["overrides"] == {
        "head": {"kind": "uniform", "name": "uniform", "bits": 8, "per_channel": False, "max_levels": 256}}
    assert back["reparam"] is True


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("name", ["sqrt2-16", "sqrt2-17", "bitlog2-single-16", "bitlog2-single-17",
                                  "bitlog2-half-16", "bitlog2-half-17"])
def test_spec_max_levels_equals_fitted_quantizer(name, bits):
    spec = attention_spec(name, bits)
    x = torch.softmax(torch.randn(4, 64) * 4, dim=-1)
    assert spec.max_levels == spec.fit(x).max_levels
    assert spec.max_levels == 2**bits + (1 if name.endswith("17") else 0)
