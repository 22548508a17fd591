"""The reparameterization protocol: exact rewrites of a producer/consumer pair that make a point easier
to quantize.

A model adapter lists its :class:`ReparamSite` s (which module produces a quantized input, which
QuantLinear consumes it, and what kind of rewrite the pair admits); a :class:`Reparameterization`
registered for that kind decides from the point's spec whether it applies, and rewrites the pair in
place. ``stage`` says when the pipeline runs it:

- ``"before"``: before the consumer's input point is fitted (AdaLog's post-GELU shift: the point must
  then see the shifted, non-negative input);
- ``"after"``: once every point is fitted (RepQ-ViT's post-LayerNorm scale folding, which turns a fitted
  per-channel quantizer into a per-tensor one).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from vitquant.errors import ConfigError
from vitquant.quantizers.spec import QuantSpec

LAYERNORM_SCALE = "layernorm_scale"
ACTIVATION_SHIFT = "activation_shift"


@dataclass(frozen=True)
class ReparamSite:
    """A producer (LayerNorm, or the module holding an activation at ``attr``) and the Linear after it."""

    kind: str
    name: str
    producer: nn.Module
    consumer: nn.Module  # a QuantLinear
    attr: str = ""


class Reparameterization(abc.ABC):
    kind: ClassVar[str]
    stage: ClassVar[str]

    @abc.abstractmethod
    def applies(self, site: ReparamSite, spec: QuantSpec) -> bool:
        """Whether the rewrite is wanted for a consumer input fitted with ``spec``."""

    @abc.abstractmethod
    def apply(self, site: ReparamSite) -> None:
        """Rewrite the pair in place (exactly: the float function of the model is unchanged)."""


_REPARAMS: dict[str, Reparameterization] = {}


def register_reparam(reparam: Reparameterization) -> Reparameterization:
    if reparam.stage not in ("before", "after"):
        raise ValueError(f"reparameterization stage must be 'before' or 'after', got {reparam.stage!r}")
    _REPARAMS[reparam.kind] = reparam
    return reparam


def reparam_for(site: ReparamSite) -> Reparameterization:
    if site.kind not in _REPARAMS:
        raise ConfigError(f"{site.name}: no reparameterization registered for kind {site.kind!r}")
    return _REPARAMS[site.kind]
