"""The model-adapter contract: how one timm model family is rewritten for quantization.

An adapter is the single place that knows a family's module layout: which Linear layers exist, which
role each quantization point has, and which LayerNorm feeds which Linear (for reparameterization).
Nothing else in vitquant matches module names.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from torch import nn

from vitquant.errors import ConfigError
from vitquant import qconfig
from vitquant.nn.linear import QuantConv2d, QuantLinear


@dataclass(frozen=True)
class ReparamPair:
    """A LayerNorm and the Linear that consumes its output (RepQ-ViT scale reparameterization)."""

    norm: nn.LayerNorm
    linear: QuantLinear
    name: str


class ModelAdapter(abc.ABC):
    """Rewrites a timm model in place so every quantization point is explicit."""

    family: str

    @abc.abstractmethod
    def supports(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""

    @abc.abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap attention, Linear and patch-embedding modules for quantizable ones (in place)."""

    @abc.abstractmethod
    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        """(LayerNorm, next Linear) pairs of a prepared model."""


_ADAPTERS: list[ModelAdapter] = []


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    _ADAPTERS.append(adapter)
    return adapter


def adapter_for(model: nn.Module) -> ModelAdapter:
    for adapter in _ADAPTERS:
        if adapter.supports(model):
            return adapter
    families = ", ".join(a.family for a in _ADAPTERS)
    raise ConfigError(f"unsupported model class {type(model).__name__}; supported families: {families}")


def swap_linear(parent: nn.Module, attr: str, role: str) -> QuantLinear:
    """Replace ``parent.<attr>`` (an ``nn.Linear``) by a :class:`QuantLinear` whose input has ``role``."""
    linear = getattr(parent, attr)
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"expected nn.Linear at .{attr} of {type(parent).__name__}, got {type(linear).__name__}")
    new = QuantLinear.from_float(linear, role)
    setattr(parent, attr, new)
    return new


def swap_patch_embed(model: nn.Module) -> None:
    """Replace the patch-embedding conv ``model.patch_embed.proj`` (input role: patch_embed_input)."""
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"{type(model).__name__} has no patch_embed.proj Conv2d")
    model.patch_embed.proj = QuantConv2d.from_float(conv, qconfig.PATCH_EMBED_INPUT)


def swap_remaining_linears(model: nn.Module) -> None:
    """Quantize every Linear not handled by the family adapter (classifier heads) as a plain linear input."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swap_linear(parent, attr, qconfig.LINEAR_INPUT)
