"""The model-adapter contract: how one timm model family is rewritten for quantization.

An adapter is the single place that knows a family's module layout: which Linear layers exist, which
role each quantization point has, which producer feeds which Linear (reparameterization sites), and
the model's *units*: the consecutive blocks whose outputs the calibration passes cache, and the two
ends around them (embedding, head: :mod:`vitquant.models.adapters.ends`), which block reconstruction
trains too. Nothing else in vitquant matches module names.
"""

from __future__ import annotations

import abc
from torch import nn

from vitquant.errors import ConfigError
from vitquant import qconfig
from vitquant.nn.linear import QuantConv2d, QuantLinear
from vitquant.nn.nonlinear import QuantGELU, QuantLayerNorm
from vitquant.reparam.base import ACTIVATION_SHIFT, LAYERNORM_SCALE, ReparamSite


def layernorm_site(norm: nn.Module, linear: nn.Module, name: str) -> ReparamSite:
    return ReparamSite(LAYERNORM_SCALE, name, norm, linear)


def activation_site(mlp: nn.Module, name: str) -> ReparamSite:
    """The Mlp's activation (``mlp.act``) before its ``fc2``."""
    return ReparamSite(ACTIVATION_SHIFT, name, mlp, mlp.fc2, attr="act")


class ModelAdapter(abc.ABC):
    """Rewrites a timm model in place so every quantization point is explicit."""

    family: str

    @abc.abstractmethod
    def supports(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""

    @abc.abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap attention, Linear, patch-embedding and the non-linear modules (Softmax, GELU,
        LayerNorm) for quantizable ones (in place)."""

    @abc.abstractmethod
    def reparam_sites(self, model: nn.Module) -> list[ReparamSite]:
        """Producer/consumer pairs of a prepared model that admit a reparameterization."""

    @abc.abstractmethod
    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The model's consecutive blocks, in order: the input of each is the output of the one before,
        with nothing in between (the calibration passes cache and replay their outputs)."""

    @abc.abstractmethod
    def embedding(self, model: nn.Module) -> nn.Module:
        """Images -> the first unit's input, as the model's forward computes it (a
        :class:`~vitquant.models.adapters.ends.ModelPart` over the model's own modules)."""

    @abc.abstractmethod
    def head(self, model: nn.Module) -> nn.Module:
        """The last unit's output -> the logits, as the model's forward computes them (a ModelPart)."""

    def reconstruction_units(self, model: nn.Module, ends: bool = True) -> list[tuple[str, nn.Module]]:
        """What block reconstruction trains, in order: the :meth:`units`, and with ``ends`` the
        embedding (``patch_embed``) before them and the head (``head``) after them; chained, they
        compute the model's logits from its images."""
        units = self.units(model)
        if not ends:
            return units
        return [("patch_embed", self.embedding(model)), *units, ("head", self.head(model))]


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


def swap_linear(parent: nn.Module, attr: str, role: str, weight_role: str = qconfig.WEIGHT) -> QuantLinear:
    """Replace ``parent.<attr>`` (an ``nn.Linear``) by a :class:`QuantLinear` whose input has ``role``
    and whose weight has ``weight_role``."""
    linear = getattr(parent, attr)
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"expected nn.Linear at .{attr} of {type(parent).__name__}, got {type(linear).__name__}")
    new = QuantLinear.from_float(linear, role, weight_role)
    setattr(parent, attr, new)
    return new


def swap_patch_embed(model: nn.Module) -> None:
    """Replace the patch-embedding conv ``model.patch_embed.proj`` (roles: patch_embed_input,
    patch_embed_weight)."""
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"{type(model).__name__} has no patch_embed.proj Conv2d")
    model.patch_embed.proj = QuantConv2d.from_float(conv, qconfig.PATCH_EMBED_INPUT, qconfig.PATCH_EMBED_WEIGHT)


def swap_remaining_linears(model: nn.Module) -> None:
    """Quantize every Linear not handled by the family adapter: the classifier heads (roles: head_input,
    head_weight)."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swap_linear(parent, attr, qconfig.HEAD_INPUT, qconfig.HEAD_WEIGHT)


def swap_nonlinear(model: nn.Module) -> None:
    """Replace every ``nn.GELU`` and ``nn.LayerNorm`` by its kernel module (float until given kernels;
    parameters shared). The attention softmax is already one in the attention rewrites."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, (QuantGELU, QuantLayerNorm)):
                continue
            if type(child) is nn.GELU:
                setattr(parent, attr, QuantGELU.from_float(child))
            elif isinstance(child, nn.LayerNorm):  # also timm's LayerNorm subclass (same function)
                setattr(parent, attr, QuantLayerNorm.from_float(child))
