"""Planning a comparison: variant parsing, plan order, refused plans, and configuration errors raised by
``run_compare`` before any model or image is loaded."""

from __future__ import annotations

import pytest

from vitquant.compare import CompareJob, Variant, parse_variant, plan_variants, run_compare, session
from vitquant.errors import ConfigError


def test_a_recipe_alone_has_no_options():
    assert parse_variant("repq-vit") == ("repq-vit", ())
    assert parse_variant("  adalog ") == ("adalog", ())


def test_options_with_dashes_or_underscores_name_the_same_field():
    recipe, options = parse_variant("repq-vit+attn-quant=twin-uniform+nonlinear=ibert")
    assert recipe == "repq-vit"
    assert options == (("attn_quant", "twin-uniform"), ("nonlinear", "ibert"))  # values keep their dashes
    assert parse_variant("repq-vit+attn_quant=twin-uniform+nonlinear=ibert") == (recipe, options)
    assert parse_variant("repq-vit + mixed-rule = output-sqnr ") == ("repq-vit", (("mixed_rule", "output-sqnr"),))


def test_one_configuration_has_one_spelling():
    """Recipe names are normalised and options sorted, so the plan catches the same variant written twice."""
    assert parse_variant("RepQ_ViT+post_gelu=adalog+attn_quant=sqrt2-16") == parse_variant("repq-vit+attn-quant=sqrt2-16+post-gelu=adalog")
    with pytest.raises(ConfigError, match="listed twice"):
        plan_variants(["repq-vit+post_gelu=adalog+attn_quant=sqrt2-16", "RepQ-ViT+attn_quant=sqrt2-16+post_gelu=adalog"], [(4, 4)])


def test_integer_options_are_integers():
    _, options = parse_variant("bitlog2-half-17+attn-bits=8+nonlinear_bits=6+post_gelu=adalog")
    assert options == (("attn_bits", 8), ("post_gelu", "adalog"), ("nonlinear_bits", 6))  # OPTIONS order
    assert all(isinstance(v, int) for k, v in options if k.endswith("bits"))
    with pytest.raises(ConfigError, match="option attn_bits needs an integer, got 'four'"):
        parse_variant("repq-vit+attn_bits=four")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("repq-vit+colour=red", "unknown option 'colour'; choose from attn_quant, attn_bits"),
        ("repq-vit+attn_quant", "option 'attn_quant' is not name=value"),
        ("repq-vit+attn_quant=", "option 'attn_quant=' is not name=value"),
        ("repq-vit+", "option '' is not name=value"),
        ("repq-vit+attn_quant=sqrt2-17+attn-quant=sqrt2-16", "option 'attn_quant' given twice"),
        ("", "has no recipe name"),
        ("+attn_quant=sqrt2-17", "has no recipe name"),
        (" +post_gelu=adalog", "has no recipe name"),
    ],
)
def test_malformed_variants_are_refused(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_variant(text)


def test_variant_label_name_and_job_fields():
    v = Variant("bitlog2-half-17", 3, 4, (("post_gelu", "adalog"), ("attn_bits", 8)))
    assert v.label == "bitlog2-half-17+post_gelu=adalog+attn_bits=8"
    assert v.name == "bitlog2-half-17+post_gelu=adalog+attn_bits=8 W3A4"
    assert v.job_fields() == {"recipe": "bitlog2-half-17", "w_bits": 3, "a_bits": 4, "post_gelu": "adalog", "attn_bits": 8}
    assert Variant("adalog", 4, 4).name == "adalog W4A4"


def test_plan_puts_bits_outermost():
    plan = plan_variants(["repq-vit", "adalog+attn_bits=8"], [(4, 4), (3, 3), (4, 8)])
    assert [v.name for v in plan] == [
        "repq-vit W4A4", "adalog+attn_bits=8 W4A4",
        "repq-vit W3A3", "adalog+attn_bits=8 W3A3",
        "repq-vit W4A8", "adalog+attn_bits=8 W4A8",
    ]
    assert plan[1] == Variant("adalog", 4, 4, (("attn_bits", 8),))


@pytest.mark.parametrize(
    ("variants", "bits", "message"),
    [
        (["repq-vit", "adalog", "repq-vit"], [(4, 4)], "variants listed twice: repq-vit W4A4"),
        (["repq-vit+attn-bits=8", "repq-vit+attn_bits=8"], [(4, 4)], r"listed twice: repq-vit\+attn_bits=8 W4A4"),
        (["repq-vit"], [(4, 4), (3, 3), (4, 4)], "variants listed twice: repq-vit W4A4"),
        ([], [(4, 4)], "give at least one recipe"),
        (["repq-vit"], [], "give at least one W/A bit width"),
    ],
)
def test_duplicate_and_empty_plans_are_refused(variants, bits, message):
    with pytest.raises(ConfigError, match=message):
        plan_variants(variants, bits)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (Variant("nope", 4, 4), "unknown recipe 'nope'"),
        (Variant("repq-vit", 9, 4), "--w-bits must be between 2 and 8"),
        (Variant("repq-vit", 4, 1), "--a-bits must be between 2 and 8"),
        (Variant("repq-vit", 4, 4, (("post_gelu", "nope"),)), "unknown post-GELU quantizer 'nope'"),
        (Variant("repq-vit", 4, 4, (("attn_quant", "bitlog2-third-17"),)), "unknown attention quantizer"),
    ],
)
def test_an_invalid_variant_fails_before_the_model_is_loaded(variant, message, tmp_path, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the variants were checked")

    monkeypatch.setattr(session, "create_model", no_model)
    job = CompareJob(calib_data=tmp_path / "missing", progress=False)  # no images either: checked after the variants
    with pytest.raises(ConfigError, match=message):
        run_compare(job, [Variant("repq-vit", 4, 4), variant])  # every variant is checked, not only the first


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timing_batch": 0}, "--timing-batch must be a positive integer, got 0"),
        ({"repeats": True}, "--repeats must be a positive integer, got True"),
        ({"figure_images": 2.0}, "--figure-images must be a positive integer, got 2.0"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
    ],
)
def test_invalid_job_settings_fail_before_the_model_is_loaded(fields, message, tmp_path, monkeypatch):
    monkeypatch.setattr(session, "create_model", lambda *_: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=message):
        run_compare(CompareJob(calib_data=tmp_path, progress=False, **fields), [Variant("repq-vit", 4, 4)])


def test_no_variants_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no variants"):
        run_compare(CompareJob(calib_data=tmp_path, progress=False), [])
