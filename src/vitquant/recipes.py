"""Recipes: named, complete quantization configurations (``vitquant recipes`` lists them).

A recipe is a plain function ``(w_bits, a_bits) -> QConfig`` registered by name, like timm's model
registry. Options on top of a recipe (:func:`build_qconfig`) replace parts of it: the post-softmax and
post-GELU quantizers, and the search and metric of every activation point.

- ``repq-vit`` (ICCV 2023): RepQ-ViT's percentile initialisation, per-channel post-LayerNorm inputs
  folded into the LayerNorm, log√2 (Sqrt2_17) attention map; the six ``sqrt2-*`` / ``bitlog2-*``
  schemes are this recipe with another attention quantizer (BitLog2, KICS 2024).
- ``adalog`` (ECCV 2024): AdaLog for the attention map and the post-GELU input (with the shift folded
  into fc2's bias), per-head uniform q, kᵀ and v, weights and every activation searched by FPCS on the
  consumer's output MSE; post-LayerNorm inputs as in RepQ-ViT.
- ``ptq4vit`` (ECCV 2022): twin-uniform attention map and post-GELU input, per-head matmul operands,
  every activation by the alternating search on the Hessian-guided metric; no reparameterization.
- ``bitlog2-recon``: the best combination measured (``benchmarks/reconstruction.py``): AdaLog's searched
  calibration with a BitLog2 attention map, then block reconstruction (a recipe may ask for the
  reconstruction stage: ``vitquant quantize --recipe bitlog2-recon`` reconstructs unless
  ``--no-reconstruct``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from vitquant.errors import ConfigError, WidthError
from vitquant.qconfig import (
    ATTENTION_SCHEMES,
    LINEAR_INPUT,
    MATMUL_INPUT,
    PATCH_EMBED_INPUT,
    POST_GELU,
    POST_LAYERNORM,
    POST_SOFTMAX,
    WEIGHT,
    QConfig,
    attention_spec,
    normalize_scheme_name,
    repq_vit_qconfig,
)
from vitquant.quantizers import make_spec
from vitquant.quantizers.spec import QuantSpec
from vitquant.quantizers.uniform import UniformSpec
from vitquant.search.registry import check_metric, check_search

log = logging.getLogger(__name__)
T = TypeVar("T")
Recipe = Callable[[int, int, int], QConfig]  # (w_bits, a_bits, attention-map bits) -> QConfig


@dataclass(frozen=True)
class RecipeEntry:
    """A registered recipe: its QConfig builder, a one-line summary, and the stages its pipeline adds
    after calibration (block reconstruction; a compensation method of :mod:`vitquant.compensation`)."""

    build: Recipe
    summary: str
    reconstruct: bool = False
    compensate: str | None = None


_RECIPES: dict[str, RecipeEntry] = {}
ACTIVATION_ROLES = (PATCH_EMBED_INPUT, POST_LAYERNORM, POST_SOFTMAX, POST_GELU, LINEAR_INPUT, MATMUL_INPUT)
POST_GELU_QUANTIZERS = ("uniform", "adalog", "twin-uniform")


def register_recipe(name: str, summary: str, reconstruct: bool = False,
                    compensate: str | None = None) -> Callable[[Recipe], Recipe]:
    """Register ``fn`` under ``name``; ``reconstruct``: the recipe's pipeline adds block reconstruction
    after calibration (the job's default, which ``--no-reconstruct`` / ``--reconstruct`` override);
    ``compensate``: and then this compensation (``--compensate`` overrides)."""

    def wrap(fn: Recipe) -> Recipe:
        _RECIPES[name] = RecipeEntry(fn, summary, reconstruct, compensate)
        return fn

    return wrap


def recipe_names() -> list[str]:
    return list(_RECIPES)


def recipe_summary(name: str) -> str:
    return _RECIPES[normalize_recipe_name(name)].summary


def recipe_reconstructs(name: str) -> bool:
    """Whether the recipe's pipeline reconstructs the blocks after calibration."""
    return _RECIPES[normalize_recipe_name(name)].reconstruct


def recipe_compensation(name: str) -> str | None:
    """The compensation method the recipe's pipeline adds after calibration (and reconstruction), or None."""
    return _RECIPES[normalize_recipe_name(name)].compensate


def normalize_recipe_name(name: str) -> str:
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(_RECIPES)}")
    return canonical


def _scheme_recipe(scheme: str) -> Recipe:
    return lambda w_bits, a_bits, attn_bits: repq_vit_qconfig(w_bits, a_bits, scheme, attn_bits)


register_recipe("repq-vit", "RepQ-ViT: percentile init, LayerNorm reparameterization, Sqrt2_17 attention")(
    _scheme_recipe("sqrt2-17")
)
for _scheme in ATTENTION_SCHEMES:
    register_recipe(_scheme, f"RepQ-ViT with the {attention_spec(_scheme, 4).name} attention map")(_scheme_recipe(_scheme))


@register_recipe("adalog", "AdaLog: adaptive-base log attention and post-GELU, per-head matmuls, weights and activations by FPCS")
def adalog(w_bits: int, a_bits: int, attn_bits: int) -> QConfig:
    fpcs = {"search": "fpcs", "metric": "mse"}
    base = repq_vit_qconfig(w_bits, a_bits, "sqrt2-17", attn_bits)
    return base.with_roles(
        **{
            WEIGHT: UniformSpec(bits=w_bits, granularity="channel", **fpcs),
            POST_SOFTMAX: make_spec("adalog", bits=attn_bits, **fpcs),
            POST_GELU: make_spec("adalog", bits=a_bits, **fpcs),
            MATMUL_INPUT: UniformSpec(bits=a_bits, granularity="head", **fpcs),
            LINEAR_INPUT: UniformSpec(bits=a_bits, **fpcs),
        }
    )


@register_recipe(
    "adalog-published",
    "AdaLog with the published calibration protocol: every calibration image scores, full-precision inputs, "
    "each point against its layer's float output, 3 weight rounds, post-LayerNorm inputs searched again after the fold",
)
def adalog_published(w_bits: int, a_bits: int, attn_bits: int) -> QConfig:
    """``adalog`` with the published code's protocol instead of this project's defaults: metric searches
    score on every calibration image (``search_images`` 1024: all of them, up to 1024), each layer is
    calibrated on the full-precision model's inputs (``inputs="parallel"``) against its own float output
    (``reference="layer"``), weights start from their own FPCS search and alternate with the inputs 3
    rounds, and post-LayerNorm inputs are searched again once folded. Its calibration takes more than 6
    times ``adalog``'s on DeiT-Tiny; its accuracy is not measured yet (docs: Compensation, rotation,
    protocols)."""
    return replace(adalog(w_bits, a_bits, attn_bits), search_images=1024, inputs="parallel", reference="layer",
                   weight_rounds=3, weight_init="search", refit_after_reparam=True)


@register_recipe(
    "adalog-qwt",
    "AdaLog, then QwT compensation of every block (no gradient steps): the best calibration-only recipe at W4A4",
    compensate="qwt",
)
def adalog_qwt(w_bits: int, a_bits: int, attn_bits: int) -> QConfig:
    """``adalog``'s calibration; the pipeline then compensates every block (QwT, :mod:`vitquant.compensation`).
    Measured on DeiT-Tiny W4A4: ``benchmarks/compensation.py`` (docs: Compensation, rotation, protocols)."""
    return adalog(w_bits, a_bits, attn_bits)


@register_recipe("ptq4vit", "PTQ4ViT: twin-uniform attention and post-GELU, alternating search, Hessian metric")
def ptq4vit(w_bits: int, a_bits: int, attn_bits: int) -> QConfig:
    alt = {"search": "alternating", "metric": "hessian"}
    cfg = QConfig(
        specs={
            WEIGHT: UniformSpec(bits=w_bits, granularity="channel"),
            PATCH_EMBED_INPUT: UniformSpec(bits=8),
            POST_LAYERNORM: UniformSpec(bits=a_bits, **alt),
            POST_SOFTMAX: make_spec("twin_uniform", bits=attn_bits, mode="softmax", **alt),
            POST_GELU: make_spec("twin_uniform", bits=a_bits, mode="gelu", **alt),
            LINEAR_INPUT: UniformSpec(bits=a_bits, **alt),
            MATMUL_INPUT: UniformSpec(bits=a_bits, granularity="head", **alt),
        },
        reparam=False,
        operand_rounds=2,
    )
    return cfg


@register_recipe(
    "bitlog2-recon",
    "AdaLog's searched calibration with a BitLog2 attention map (Half_17; Single_17 and 8-bit ends below 4 bits), "
    "then block reconstruction",
    reconstruct=True,
)
def bitlog2_recon(w_bits: int, a_bits: int, attn_bits: int) -> QConfig:
    """``adalog`` with BitLog2 on the attention map, then reconstruction (the pipeline's stage).

    BitLog2 Half_17 at 4 bits and more; below, Single_17: at 3 bits Half's 9 levels reach down only to
    1/24 (about 2^-4.6), under which almost every probability of a 197-token row falls, where Single's
    reach 2^-8. Below 4 bits the patch-embedding weight and the head's weight and input stay at
    8 bits (:meth:`QConfig.with_ends`). Measured on DeiT-Tiny: ``benchmarks/reconstruction.py``.
    """
    cfg = adalog(w_bits, a_bits, attn_bits)
    scheme = "bitlog2-half-17" if attn_bits >= 4 else "bitlog2-single-17"
    cfg = cfg.with_roles(**{POST_SOFTMAX: _attention_like(cfg, scheme, attn_bits)})
    return cfg.with_ends(8) if min(w_bits, a_bits) < 4 else cfg


def _at_widest(build: Callable[[int], T], bits: int, follows_a_bits: bool) -> T:
    """``build(bits)``; when the attention map's width follows ``--a-bits`` (no ``--attn-bits``) and its
    quantizer cannot be that wide (BitLog2: Half 6 bits, Single 5), ``build`` at the widest it supports,
    with a warning. An explicit ``--attn-bits`` beyond that stays an error."""
    try:
        return build(bits)
    except WidthError as exc:
        if not follows_a_bits:
            raise
        log.warning("%s supports at most %d bits: the attention map is quantized at %d bits, not %d "
                    "(choose with --attn-bits, or another --attn-quant)", exc.what, exc.widest, exc.widest, bits)
        return build(exc.widest)


def _attention_like(cfg: QConfig, name: str, bits: int) -> QuantSpec:
    """The attention quantizer ``name`` at ``bits`` with the search and metric of ``cfg``'s own."""
    old = cfg.specs[POST_SOFTMAX]
    return attention_spec(name, bits, search=old.search, metric=old.metric)


def post_gelu_spec(name: str, bits: int, **options: object) -> QuantSpec:
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in POST_GELU_QUANTIZERS:
        raise ConfigError(f"unknown post-GELU quantizer {name!r}; choose one of {', '.join(POST_GELU_QUANTIZERS)}")
    if canonical == "twin-uniform":
        return make_spec("twin_uniform", bits=bits, mode="gelu", **options)
    return make_spec(canonical, bits=bits, **options)


def build_qconfig(
    recipe: str = "bitlog2-half-17",
    w_bits: int = 4,
    a_bits: int = 4,
    attn_quant: str | None = None,
    attn_bits: int | None = None,
    post_gelu: str | None = None,
    search: str | None = None,
    metric: str | None = None,
    ends_bits: int | None = None,
) -> QConfig:
    """The recipe's QConfig with explicit choices replacing parts of it.

    ``attn_quant`` / ``post_gelu`` replace those roles' quantizers (keeping the recipe's search and
    metric for the role); ``attn_bits`` the attention map's bit width; ``search`` / ``metric`` apply to
    every activation point (not the weights, which are fitted on their own values); ``ends_bits`` the
    width of the patch-embedding weight and the head's weight and input (:meth:`QConfig.with_ends`).
    """
    fn = _RECIPES[normalize_recipe_name(recipe)].build
    bits = a_bits if attn_bits is None else attn_bits
    # with attn_quant the recipe's own attention quantizer is replaced (only its search and metric are
    # kept), so it is built at a width every scheme supports (BitLog2 Half stops at 6 bits)
    cfg = _at_widest(lambda b: fn(w_bits, a_bits, b), bits if attn_quant is None else min(bits, 4), attn_bits is None)
    roles: dict[str, QuantSpec] = {}
    if attn_quant is not None:
        scheme = normalize_scheme_name(attn_quant)
        roles[POST_SOFTMAX] = _at_widest(lambda b: _attention_like(cfg, scheme, b), bits, attn_bits is None)
    if post_gelu is not None:
        old = cfg.specs[POST_GELU]
        roles[POST_GELU] = post_gelu_spec(post_gelu, a_bits, search=old.search, metric=old.metric)
    cfg = cfg.with_roles(**roles) if roles else cfg
    if search is not None or metric is not None:
        changes = {}
        if search is not None:
            changes["search"] = check_search(search)
        if metric is not None:
            changes["metric"] = check_metric(metric)
        cfg = cfg.with_roles(**{role: replace(cfg.specs[role], **changes) for role in ACTIVATION_ROLES})
    return cfg if ends_bits is None else cfg.with_ends(ends_bits)
