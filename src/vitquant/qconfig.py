"""Which quantizer goes at which quantization point: plain data, like ``torch.ao.quantization.QConfig``.

A :class:`QConfig` maps each *role* of a quantization point (set by the model adapter) to a
:class:`~vitquant.quantizers.spec.QuantSpec`, with per-point overrides by exact module name or
``fnmatch`` pattern (``blocks.11.*``), plus the search budgets and the calibration settings. Recipes
(:mod:`vitquant.recipes`) build QConfigs; nothing here knows a method by name except the attention
scheme spellings.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vitquant.errors import ConfigError
from vitquant.nonlinear.config import NonlinearConfig
from vitquant.quantizers import make_spec
from vitquant.quantizers.bitlog2 import BitLog2Spec
from vitquant.quantizers.log_sqrt2 import LogSqrt2Spec
from vitquant.quantizers.spec import QuantSpec
from vitquant.quantizers.uniform import UniformSpec
from vitquant.search.grid_search import SearchSettings

# Roles a model adapter assigns to quantization points.
WEIGHT = "weight"
PATCH_EMBED_INPUT = "patch_embed_input"  # input of the patch-embedding conv (8 bit in RepQ-ViT)
POST_LAYERNORM = "post_layernorm"  # inputs of qkv / fc1 / Swin reduction: per-channel, then reparam
POST_SOFTMAX = "post_softmax"  # attention map, input A of attn @ v
POST_GELU = "post_gelu"  # input of fc2
LINEAR_INPUT = "linear_input"  # other Linear inputs (attention proj, head)
MATMUL_INPUT = "matmul_input"  # q, kᵀ (q @ kᵀ) and v (attn @ v)
ROLES = (WEIGHT, PATCH_EMBED_INPUT, POST_LAYERNORM, POST_SOFTMAX, POST_GELU, LINEAR_INPUT, MATMUL_INPUT)
# Refined roles of the model's two ends: a QConfig may set them; unset, they take their parent role's spec.
PATCH_EMBED_WEIGHT = "patch_embed_weight"  # weight of the patch-embedding conv
HEAD_WEIGHT = "head_weight"  # weight of the classifier head
HEAD_INPUT = "head_input"  # input of the classifier head
PARENT_ROLES = MappingProxyType({PATCH_EMBED_WEIGHT: WEIGHT, HEAD_WEIGHT: WEIGHT, HEAD_INPUT: LINEAR_INPUT})
ALL_ROLES = (*ROLES, *PARENT_ROLES)

# ---------------------------------------------------------------- attention schemes by name
ATTENTION_SCHEMES = (
    "sqrt2-16",
    "sqrt2-17",
    "bitlog2-single-16",
    "bitlog2-single-17",
    "bitlog2-half-16",
    "bitlog2-half-17",
)
#: further post-softmax quantizers of ``--attn-quant`` (not part of the six BitLog2/log√2 schemes)
OTHER_ATTENTION_QUANTIZERS = ("adalog", "twin-uniform", "uniform")


def normalize_scheme_name(name: str) -> str:
    """Accept ``BitLog2_Half_17`` (seed spelling) or ``bitlog2-half-17``; return the canonical form."""
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in ATTENTION_SCHEMES + OTHER_ATTENTION_QUANTIZERS:
        choices = ", ".join(ATTENTION_SCHEMES + OTHER_ATTENTION_QUANTIZERS)
        raise ConfigError(f"unknown attention quantizer {name!r}; choose one of {choices}")
    return canonical


def attention_spec(name: str, bits: int, **options: Any) -> QuantSpec:
    """The post-softmax spec for an attention quantizer name at ``bits`` (extra spec options allowed)."""
    canonical = normalize_scheme_name(name)
    if canonical == "adalog":
        return make_spec("adalog", bits=bits, **options)
    if canonical == "twin-uniform":
        return make_spec("twin_uniform", bits=bits, mode="softmax", **options)
    if canonical == "uniform":
        return UniformSpec(bits=bits, **options)
    family, _, variant_text = canonical.rpartition("-")
    variant = int(variant_text)
    if family == "sqrt2":
        return LogSqrt2Spec(bits=bits, variant=variant, **options)
    return BitLog2Spec(bits=bits, variant=variant, half=family.endswith("half"), **options)


# ---------------------------------------------------------------- the configuration object
REFERENCES = ("local", "float", "layer")


@dataclass(frozen=True)
class QConfig:
    """Role -> spec for every quantization point, per-point overrides, and the calibration settings.

    - ``overrides``: module name (``blocks.0.mlp.fc2.input_quant``; weights: ``<layer>.weight``) or an
      ``fnmatch`` pattern -> spec; the first matching entry wins, exact names before patterns.
    - ``reparam``: apply the reparameterizations the specs call for (RepQ-ViT's post-LayerNorm scale
      folding, AdaLog's post-GELU shift).
    - ``search``: budgets of the metric searches; ``search_images``: how many calibration images the
      metric searches score candidates on (the first ones); ``operand_rounds``: how often the two
      operands of a matmul are fitted in turn when one of them uses a metric search.
    - ``nonlinear``: which integer kernel (if any) runs each Softmax, GELU and LayerNorm
      (:class:`~vitquant.nonlinear.config.NonlinearConfig`; default: every op in float).
    - ``reference``: what a metric search compares the consumer's output with. ``"local"`` (default):
      the same consumer on the same (already partly quantized) inputs with this point's operand left
      at full precision, so the metric measures the error this point adds. ``"float"``: the float
      model's output of that consumer, which also counts the error of every earlier point; on a few
      search images the search then compensates upstream errors and over-fits (measured on DeiT-Tiny:
      FPCS on the proj/head inputs dropped FP agreement on 16 held-out images from 69 % to 31 %).
      ``"layer"``: the same consumer on the same inputs with every operand at full precision and its
      float weight (AdaLog's objective: each point and the weight are scored against the layer's own
      float output, not against a partly quantized one).
    - ``weight_rounds``: at a consumer whose weight uses a metric search, how often its input points
      and its weight are searched in turn (AdaLog alternates 3 rounds); 1: inputs, then the weight.
    - ``weight_init``: the weights' fit before any activation is calibrated: ``"percentile"`` (the
      spec's data-only rule) or ``"search"`` (the weight spec's search on the weight's own
      reconstruction error, per output channel; AdaLog's initialisation).
    - ``refit_after_reparam``: once a per-channel input is folded into the LayerNorm and the next
      Linear (a per-tensor quantizer remains), search that per-tensor quantizer again with the spec's
      search and metric on the consumer's output (AdaLog), alternating with the weight; otherwise the
      folded quantizer (mean step, rounded mean zero point) is kept.
    - ``inputs``: what a consumer's points are fitted on. ``"sequential"`` (RepQ-ViT): the inputs as
      they arrive through the already quantized layers before it; ``"parallel"`` (AdaLog, PTQ4ViT):
      the full-precision inputs of the same model (every point and weight off during the passes), so
      each layer is calibrated independently of the others' errors.
    """

    specs: Mapping[str, QuantSpec]
    overrides: Mapping[str, QuantSpec] = field(default_factory=dict)
    reparam: bool = True
    search: SearchSettings = field(default_factory=SearchSettings)
    search_images: int = 4
    operand_rounds: int = 1
    reference: str = "local"
    nonlinear: NonlinearConfig = field(default_factory=NonlinearConfig)
    weight_rounds: int = 1
    weight_init: str = "percentile"
    refit_after_reparam: bool = False
    inputs: str = "sequential"

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.weight_init not in ("percentile", "search"):
            raise ConfigError(f"weight_init must be 'percentile' or 'search', got {self.weight_init!r}")
        if self.inputs not in ("sequential", "parallel"):
            raise ConfigError(f"inputs must be 'sequential' or 'parallel', got {self.inputs!r}")
        if self.weight_rounds < 1:
            raise ConfigError("weight_rounds must be at least 1")
        missing = [r for r in ROLES if r not in self.specs]
        if missing:
            raise ConfigError(f"QConfig misses specs for roles {missing}")
        unknown = sorted(set(self.specs) - set(ALL_ROLES))
        if unknown:
            raise ConfigError(f"unknown roles {unknown}; roles: {', '.join(ALL_ROLES)}")
        if self.search_images < 1 or self.operand_rounds < 1:
            raise ConfigError("search_images and operand_rounds must be at least 1")
        object.__setattr__(self, "specs", MappingProxyType(dict(self.specs)))
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def spec_for(self, point_name: str, role: str) -> QuantSpec:
        """The spec for the point named ``point_name`` (module path) with ``role``."""
        if point_name in self.overrides:
            return self.overrides[point_name]
        for pattern, spec in self.overrides.items():
            if fnmatch.fnmatchcase(point_name, pattern):
                return spec
        return self.role_spec(role)

    def role_spec(self, role: str) -> QuantSpec:
        """The spec of ``role``; a refined role left unset (:data:`PARENT_ROLES`) takes its parent's."""
        if role in self.specs:
            return self.specs[role]
        if role in PARENT_ROLES:
            return self.specs[PARENT_ROLES[role]]
        raise ConfigError(f"no quantizer spec for role {role!r}")

    def with_overrides(self, overrides: Mapping[str, QuantSpec]) -> QConfig:
        return replace(self, overrides={**self.overrides, **overrides})

    def with_nonlinear(self, nonlinear: NonlinearConfig) -> QConfig:
        return replace(self, nonlinear=nonlinear)

    def with_roles(self, **specs: QuantSpec) -> QConfig:
        return replace(self, specs={**self.specs, **specs})  # unknown roles: ConfigError on construction

    def with_ends(self, bits: int) -> QConfig:
        """The model's two ends at ``bits``: the patch-embedding weight, the head's weight and the head's
        input, each with its role's current spec at the new width (the weights per output channel).
        Unset, RepQ-ViT's choice holds: the patch-embedding and head weights and the head input at the
        width of every other weight and input."""
        return self.with_roles(**{role: replace(self.role_spec(role), bits=bits)
                                  for role in (PATCH_EMBED_WEIGHT, HEAD_WEIGHT, HEAD_INPUT)})

    def all_specs(self) -> list[QuantSpec]:
        return [*self.specs.values(), *self.overrides.values()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": {role: spec.to_dict() for role, spec in self.specs.items()},
            "overrides": {name: spec.to_dict() for name, spec in self.overrides.items()},
            "reparam": self.reparam,
            "search": asdict(self.search),
            "search_images": self.search_images,
            "operand_rounds": self.operand_rounds,
            "reference": self.reference,
            "nonlinear": self.nonlinear.to_dict(),
            "weight_rounds": self.weight_rounds,
            "weight_init": self.weight_init,
            "refit_after_reparam": self.refit_after_reparam,
            "inputs": self.inputs,
        }


def repq_vit_qconfig(
    w_bits: int = 4, a_bits: int = 4, attn_scheme: str = "bitlog2-half-17", attn_bits: int | None = None
) -> QConfig:
    """RepQ-ViT W/A configuration with the given post-softmax scheme (BitLog2 or log√2).

    Weights per output channel at ``w_bits``; every activation entering a Linear or a matmul per tensor
    at ``a_bits`` (post-LayerNorm ones per channel before reparameterization); the patch-embedding input
    at 8 bit; the attention map with ``attn_scheme`` at ``attn_bits`` (default ``a_bits``).
    """
    act = UniformSpec(bits=a_bits)
    return QConfig(
        specs={
            WEIGHT: UniformSpec(bits=w_bits, granularity="channel"),
            PATCH_EMBED_INPUT: UniformSpec(bits=8),
            POST_LAYERNORM: UniformSpec(bits=a_bits, granularity="channel"),
            POST_SOFTMAX: attention_spec(attn_scheme, a_bits if attn_bits is None else attn_bits),
            POST_GELU: act,
            LINEAR_INPUT: act,
            MATMUL_INPUT: act,
        }
    )
