"""Recipes by name and the options that replace parts of them."""

from __future__ import annotations

import json

import pytest

from vitquant import qconfig as qc
from vitquant.errors import ConfigError
from vitquant.recipes import build_qconfig, recipe_names
from vitquant.workflow import QuantizeJob


def test_recipes_listed():
    names = recipe_names()
    assert {"repq-vit", "adalog", "ptq4vit"} <= set(names)
    assert set(qc.ATTENTION_SCHEMES) <= set(names)


def test_repq_vit_is_sqrt2_17_and_schemes_are_repq():
    assert build_qconfig("repq-vit", 4, 4) == qc.repq_vit_qconfig(4, 4, "sqrt2-17")
    for scheme in qc.ATTENTION_SCHEMES:
        assert build_qconfig(scheme.upper().replace("-", "_"), 3, 4) == qc.repq_vit_qconfig(3, 4, scheme)


def test_adalog_recipe():
    cfg = build_qconfig("adalog", 4, 4)
    assert cfg.specs[qc.POST_SOFTMAX].kind == "adalog" and cfg.specs[qc.POST_GELU].kind == "adalog"
    assert cfg.specs[qc.MATMUL_INPUT].granularity == "head"
    assert {cfg.specs[r].search_name for r in (qc.POST_SOFTMAX, qc.POST_GELU, qc.MATMUL_INPUT, qc.LINEAR_INPUT)} == {"fpcs"}
    assert cfg.specs[qc.PATCH_EMBED_INPUT].bits == 8 and cfg.reparam
    assert cfg.specs[qc.WEIGHT].search_name == "fpcs" and cfg.specs[qc.WEIGHT].granularity == "channel"


def test_ptq4vit_recipe():
    cfg = build_qconfig("ptq4vit", 6, 6)
    assert cfg.specs[qc.POST_SOFTMAX].kind == "twin_uniform" and cfg.specs[qc.POST_SOFTMAX].mode == "softmax"
    assert cfg.specs[qc.POST_GELU].mode == "gelu"
    assert {s.metric for r, s in cfg.specs.items() if r not in (qc.WEIGHT, qc.PATCH_EMBED_INPUT)} == {"hessian"}
    assert not cfg.reparam


def test_explicit_choices_replace_parts_of_a_recipe():
    cfg = build_qconfig("bitlog2-half-17", 4, 4, post_gelu="adalog")  # the mix of the benchmark
    assert cfg.specs[qc.POST_SOFTMAX].name == "BitLog2_Half_17" and cfg.specs[qc.POST_GELU].kind == "adalog"
    cfg = build_qconfig("adalog", 4, 4, attn_quant="BitLog2_Half_17", attn_bits=3)
    assert cfg.specs[qc.POST_SOFTMAX].format_name == "BitLog2_Half_17" and cfg.specs[qc.POST_SOFTMAX].bits == 3
    assert cfg.specs[qc.POST_SOFTMAX].search_name == "fpcs"  # the recipe's search for the role stays
    cfg = build_qconfig("repq-vit", 4, 4, search="brute-force", metric="cosine")
    assert all(cfg.specs[r].search_name == "brute-force" and cfg.specs[r].metric == "cosine"
               for r in qc.ROLES if r != qc.WEIGHT)
    assert cfg.specs[qc.WEIGHT].search_name == "percentile"
    cfg = build_qconfig("ptq4vit", 4, 4, attn_quant="twin-uniform", post_gelu="twin-uniform")
    assert cfg.specs[qc.POST_GELU].mode == "gelu"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"recipe": "brecq"}, "unknown recipe"),
        ({"attn_quant": "log2"}, "unknown attention quantizer"),
        ({"post_gelu": "bitlog2"}, "unknown post-GELU quantizer"),
        ({"search": "random"}, "unknown search"),
        ({"metric": "kl"}, "unknown metric"),
    ],
)
def test_bad_choices(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_qconfig(**{"recipe": "repq-vit", **kwargs})


def test_job_records_the_resolved_configuration():
    job = QuantizeJob(recipe="ptq4vit", attn_quant="BitLog2_Half_17", post_gelu="adalog", search="fpcs")
    job.validate()
    d = json.loads(json.dumps(job.qconfig().to_dict()))
    assert d["roles"]["post_softmax"]["name"] == "BitLog2_Half_17"
    assert d["roles"]["post_gelu"]["kind"] == "adalog" and d["roles"]["post_gelu"]["search"] == "fpcs"
    assert d["roles"]["post_gelu"]["metric"] == "hessian"
    assert d["search"]["budget"] == 128 and d["reference"] == "local" and d["reparam"] is False


@pytest.mark.parametrize("recipe", ["bitlog2-half-17", "bitlog2-single-17", "adalog", "ptq4vit", "repq-vit"])
def test_attention_options_at_8_bits_do_not_need_the_recipes_own_scheme_to_fit(recipe):
    """BitLog2 Half stops at 6 bits: at W8A8 --attn-bits and --attn-quant must still work (the recipe's
    attention quantizer is built at the requested width, or replaced)."""
    from vitquant.qconfig import POST_SOFTMAX

    cfg = build_qconfig(recipe, 8, 8, attn_bits=4)
    assert cfg.specs[POST_SOFTMAX].bits == 4 and cfg.specs["linear_input"].bits == 8
    cfg = build_qconfig(recipe, 8, 8, attn_quant="uniform")
    spec = cfg.specs[POST_SOFTMAX]
    assert spec.kind == "uniform" and spec.bits == 8
    assert spec.search == build_qconfig(recipe, 4, 4).specs[POST_SOFTMAX].search  # the recipe's search kept
    if recipe.startswith("bitlog2"):  # the width follows --a-bits: built at the widest it supports, warned
        widest = 6 if "half" in recipe else 5
        assert build_qconfig(recipe, 8, 8).specs[POST_SOFTMAX].bits == widest
        with pytest.raises(ConfigError, match="at most"):  # asked for explicitly: an error
            build_qconfig(recipe, 8, 8, attn_bits=8)


def test_ends_roles_fall_back_to_their_parents_until_set():
    cfg = build_qconfig("bitlog2-half-17", 3, 3)
    assert cfg.spec_for("head.weight", qc.HEAD_WEIGHT) == cfg.specs[qc.WEIGHT]
    assert cfg.spec_for("patch_embed.proj.weight", qc.PATCH_EMBED_WEIGHT) == cfg.specs[qc.WEIGHT]
    assert cfg.spec_for("head.input_quant", qc.HEAD_INPUT) == cfg.specs[qc.LINEAR_INPUT]
    assert not set(qc.PARENT_ROLES) & set(cfg.to_dict()["roles"])  # unset: not recorded

    ends = build_qconfig("bitlog2-half-17", 3, 3, ends_bits=8)
    for role, parent in qc.PARENT_ROLES.items():
        spec = ends.spec_for("x", role)
        assert spec.bits == 8 and spec.granularity == cfg.specs[parent].granularity
        assert ends.to_dict()["roles"][role]["bits"] == 8
    assert ends.specs[qc.WEIGHT].bits == 3 and ends.specs[qc.LINEAR_INPUT].bits == 3
    assert ends.overrides == cfg.overrides  # roles, not name patterns: any model family


def test_ends_bits_errors():
    with pytest.raises(ConfigError, match="bit"):
        build_qconfig("bitlog2-half-17", 4, 4, ends_bits=1)
    with pytest.raises(ConfigError, match="--ends-bits"):
        QuantizeJob(ends_bits=9).validate()
    with pytest.raises(ConfigError, match="unknown roles"):
        build_qconfig().with_roles(tail_weight=qc.UniformSpec(bits=8))


def test_bitlog2_recon_recipe_reconstructs_with_bitlog2_on_adalogs_calibration():
    from vitquant.recipes import recipe_reconstructs

    assert recipe_reconstructs("bitlog2-recon") and not recipe_reconstructs("adalog")
    adalog = build_qconfig("adalog", 4, 4)
    w4 = build_qconfig("bitlog2-recon", 4, 4)
    attn = w4.specs[qc.POST_SOFTMAX]
    assert attn.name == "BitLog2_Half_17" and attn.bits == 4 and attn.search == "fpcs"
    assert {r: s for r, s in w4.specs.items() if r != qc.POST_SOFTMAX} == {r: s for r, s in adalog.specs.items() if r != qc.POST_SOFTMAX}
    w3 = build_qconfig("bitlog2-recon", 3, 3)  # Half reaches only 2^-4 at 3 bits: Single; the ends at 8 bits
    assert w3.specs[qc.POST_SOFTMAX].name == "BitLog2_Single_17" and w3.specs[qc.POST_SOFTMAX].bits == 3
    assert {w3.role_spec(r).bits for r in qc.PARENT_ROLES} == {8} and w3.specs[qc.WEIGHT].bits == 3
    assert build_qconfig("bitlog2-recon", 3, 3, attn_bits=4).specs[qc.POST_SOFTMAX].name == "BitLog2_Half_17"

    job = QuantizeJob(recipe="bitlog2-recon")
    job.validate()
    assert job.reconstruct is True
    off = QuantizeJob(recipe="bitlog2-recon", reconstruct=False)
    off.validate()
    assert off.reconstruct is False
    plain = QuantizeJob()
    plain.validate()
    assert plain.reconstruct is False


def test_adalog_published_restores_the_published_protocol():
    """The same formats as ``adalog``; the calibration protocol of the published code."""
    from vitquant.recipes import build_qconfig

    ours, published = build_qconfig("adalog", 4, 4), build_qconfig("adalog-published", 4, 4)
    assert dict(ours.specs) == dict(published.specs)
    assert (ours.search_images, ours.inputs, ours.reference, ours.weight_rounds) == (4, "sequential", "local", 1)
    assert published.search_images >= 1024 and published.inputs == "parallel" and published.reference == "layer"
    assert published.weight_rounds == 3 and published.weight_init == "search" and published.refit_after_reparam


def test_adalog_qwt_is_adalog_then_compensation():
    from vitquant.recipes import build_qconfig, recipe_compensation, recipe_reconstructs
    from vitquant.workflow import QuantizeJob

    assert build_qconfig("adalog-qwt", 4, 4) == build_qconfig("adalog", 4, 4)
    assert recipe_compensation("adalog-qwt") == "qwt" and recipe_compensation("adalog") is None
    assert not recipe_reconstructs("adalog-qwt")
    job = QuantizeJob(recipe="adalog-qwt")
    job.validate()
    assert job.compensate == "qwt"
    job = QuantizeJob(recipe="adalog-qwt", compensate="none")  # --compensate none switches it off
    job.validate()
    assert job.compensate == "none"
