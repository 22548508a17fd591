"""Which quantizer goes at which quantization point: plain data, like ``torch.ao.quantization.QConfig``.

A :class:`QuantSpec` names a number format and its bit width; ``spec.fit(x)`` runs the matching search
and returns a fitted :class:`~vitquant.quantizers.Quantizer`. A :class:`QConfig` maps each *role* of a
quantization point (set by the model adapter) to a spec, with optional per-point overrides by module
name, so later methods plug in as new spec kinds or per-layer choices instead of new code paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.bitlog2 import BitLog2Scheme
from vitquant.quantizers.log_sqrt2 import log_sqrt2_max_levels
from vitquant.search.bitlog2_divisor import fit_bitlog2
from vitquant.search.log_sqrt2_delta import fit_log_sqrt2
from vitquant.search.percentile_mse import fit_uniform

# Roles a model adapter assigns to quantization points.
WEIGHT = "weight"
PATCH_EMBED_INPUT = "patch_embed_input"  # input of the patch-embedding conv (8 bit in RepQ-ViT)
POST_LAYERNORM = "post_layernorm"  # inputs of qkv / fc1 / Swin reduction: per-channel, then reparam
POST_SOFTMAX = "post_softmax"  # attention map, input A of attn @ v
POST_GELU = "post_gelu"  # input of fc2
LINEAR_INPUT = "linear_input"  # other Linear inputs (attention proj, head)
MATMUL_INPUT = "matmul_input"  # q, k (q @ kᵀ) and v (attn @ v)
ROLES = (WEIGHT, PATCH_EMBED_INPUT, POST_LAYERNORM, POST_SOFTMAX, POST_GELU, LINEAR_INPUT, MATMUL_INPUT)


@dataclass(frozen=True)
class QuantSpec:
    """A number format to fit at a point: ``kind`` in :data:`FITTERS`, bit width, and its options.

    - ``uniform``: ``per_channel`` selects one (Δ, z) per channel (the dimension given at fit time).
    - ``log_sqrt2``: ``variant`` 16 or 17.
    - ``bitlog2``: ``variant`` 16 or 17 and ``half``.
    """

    kind: str
    bits: int
    per_channel: bool = False
    variant: int | None = None
    half: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FITTERS:
            raise ConfigError(f"unknown quantizer kind {self.kind!r}; known: {sorted(FITTERS)}")
        check_bits(self.bits, f"{self.kind} bit width")
        if self.kind in ("log_sqrt2", "bitlog2") and self.variant not in (16, 17):
            raise ConfigError(f"{self.kind} needs variant 16 or 17, got {self.variant!r}")
        if self.kind == "bitlog2":
            self.bitlog2_scheme()  # validates int_max for the bit width

    @property
    def name(self) -> str:
        if self.kind == "uniform":
            return f"uniform{'-per-channel' if self.per_channel else ''}"
        if self.kind == "log_sqrt2":
            return f"Sqrt2_{self.variant}"
        return self.bitlog2_scheme().name

    @property
    def max_levels(self) -> int:
        """Distinct values a quantizer of this spec can emit (per channel when per-channel)."""
        if self.kind == "log_sqrt2":
            return log_sqrt2_max_levels(self.bits, int(self.variant or 0))
        if self.kind == "bitlog2":
            return self.bitlog2_scheme().max_levels
        return 2**self.bits

    def bitlog2_scheme(self) -> BitLog2Scheme:
        return BitLog2Scheme(half=self.half, variant=int(self.variant or 0), bits=self.bits)

    def fit(self, x: torch.Tensor, channel_dim: int | None = None, where: str = "") -> Quantizer:
        """Run this spec's search on calibration data ``x`` and return the fitted quantizer."""
        return FITTERS[self.kind](self, x, channel_dim, where or self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "bits": self.bits,
            "per_channel": self.per_channel,
            "max_levels": self.max_levels,
        }


def _fit_uniform(spec: QuantSpec, x: torch.Tensor, channel_dim: int | None, where: str) -> Quantizer:
    return fit_uniform(x, spec.bits, channel_dim if spec.per_channel else None, where=where)


def _fit_log_sqrt2(spec: QuantSpec, x: torch.Tensor, channel_dim: int | None, where: str) -> Quantizer:
    return fit_log_sqrt2(x, spec.bits, int(spec.variant or 0), where=where)


def _fit_bitlog2(spec: QuantSpec, x: torch.Tensor, channel_dim: int | None, where: str) -> Quantizer:
    return fit_bitlog2(x, spec.bitlog2_scheme(), where=where)


Fitter = Callable[[QuantSpec, torch.Tensor, "int | None", str], Quantizer]
FITTERS: dict[str, Fitter] = {"uniform": _fit_uniform, "log_sqrt2": _fit_log_sqrt2, "bitlog2": _fit_bitlog2}

# ---------------------------------------------------------------- attention schemes by name
ATTENTION_SCHEMES = (
    "sqrt2-16",
    "sqrt2-17",
    "bitlog2-single-16",
    "bitlog2-single-17",
    "bitlog2-half-16",
    "bitlog2-half-17",
)


def normalize_scheme_name(name: str) -> str:
    """Accept ``BitLog2_Half_17`` (seed spelling) or ``bitlog2-half-17``; return the canonical form."""
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in ATTENTION_SCHEMES:
        raise ConfigError(f"unknown attention scheme {name!r}; choose one of {', '.join(ATTENTION_SCHEMES)}")
    return canonical


def attention_spec(name: str, bits: int) -> QuantSpec:
    """The post-softmax :class:`QuantSpec` for an attention scheme name at ``bits``."""
    family, _, variant_text = normalize_scheme_name(name).rpartition("-")
    variant = int(variant_text)
    if family == "sqrt2":
        return QuantSpec("log_sqrt2", bits, variant=variant)
    return QuantSpec("bitlog2", bits, variant=variant, half=family.endswith("half"))


# ---------------------------------------------------------------- the configuration object
@dataclass(frozen=True)
class QConfig:
    """Role -> spec for every quantization point, per-point overrides, and the reparam switch."""

    specs: Mapping[str, QuantSpec]
    overrides: Mapping[str, QuantSpec] = field(default_factory=dict)
    reparam: bool = True

    def __post_init__(self) -> None:
        missing = [r for r in ROLES if r not in self.specs]
        if missing:
            raise ConfigError(f"QConfig misses specs for roles {missing}")
        object.__setattr__(self, "specs", MappingProxyType(dict(self.specs)))
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def spec_for(self, point_name: str, role: str) -> QuantSpec:
        """The spec for the point named ``point_name`` (module path) with ``role``."""
        if point_name in self.overrides:
            return self.overrides[point_name]
        if role not in self.specs:
            raise ConfigError(f"no quantizer spec for role {role!r}")
        return self.specs[role]

    def with_overrides(self, overrides: Mapping[str, QuantSpec]) -> QConfig:
        return replace(self, overrides={**self.overrides, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": {role: spec.to_dict() for role, spec in self.specs.items()},
            "overrides": {name: spec.to_dict() for name, spec in self.overrides.items()},
            "reparam": self.reparam,
        }


def repq_vit_qconfig(
    w_bits: int = 4, a_bits: int = 4, attn_scheme: str = "bitlog2-half-17", attn_bits: int | None = None
) -> QConfig:
    """RepQ-ViT W/A configuration with the given post-softmax scheme (BitLog2 or log√2).

    Weights per output channel at ``w_bits``; every activation entering a Linear or a matmul per tensor
    at ``a_bits`` (post-LayerNorm ones per channel before reparameterization); the patch-embedding input
    at 8 bit; the attention map with ``attn_scheme`` at ``attn_bits`` (default ``a_bits``).
    """
    act = QuantSpec("uniform", a_bits)
    return QConfig(
        specs={
            WEIGHT: QuantSpec("uniform", w_bits, per_channel=True),
            PATCH_EMBED_INPUT: QuantSpec("uniform", 8),
            POST_LAYERNORM: QuantSpec("uniform", a_bits, per_channel=True),
            POST_SOFTMAX: attention_spec(attn_scheme, a_bits if attn_bits is None else attn_bits),
            POST_GELU: act,
            LINEAR_INPUT: act,
            MATMUL_INPUT: act,
        }
    )
