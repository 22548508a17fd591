"""Adapter for timm ``VisionTransformer`` (ViT, DeiT, DeiT-distilled).

Per block: the residual adds become modules (:class:`~vitquant.nn.blocks.QuantViTBlock`); qkv and fc1 take post-LayerNorm inputs (norm1, norm2), proj a plain linear input, fc2 the
post-GELU activation; q, k, v and the softmax output are explicit points in :class:`QuantViTAttention`.
"""

from __future__ import annotations

from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vitquant import qconfig
from vitquant.errors import ConfigError
from vitquant.models.adapters.base import (
    ModelAdapter,
    ReparamSite,
    activation_site,
    layernorm_site,
    register_adapter,
    swap_linear,
    swap_patch_embed,
    swap_nonlinear,
    swap_remaining_linears,
)
from vitquant.models.adapters.ends import ModelPart, present
from vitquant.nn.attention import QuantViTAttention
from vitquant.nn.blocks import QuantViTBlock


class ViTAdapter(ModelAdapter):
    family = "vit/deit (timm VisionTransformer)"

    def supports(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def prepare(self, model: nn.Module) -> nn.Module:
        swap_patch_embed(model)
        for i, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention or not isinstance(block.mlp, Mlp):
                raise ConfigError(
                    f"block {i} of {type(model).__name__} is {type(block).__name__}; only timm's standard "
                    "Block(Attention, Mlp) is supported"
                )
            block = model.blocks[i] = QuantViTBlock.from_float(block)
            block.attn = QuantViTAttention.from_float(block.attn)
            swap_linear(block.attn, "qkv", qconfig.POST_LAYERNORM)
            swap_linear(block.attn, "proj", qconfig.LINEAR_INPUT)
            swap_linear(block.mlp, "fc1", qconfig.POST_LAYERNORM)
            swap_linear(block.mlp, "fc2", qconfig.POST_GELU)
        swap_remaining_linears(model)
        swap_nonlinear(model)
        return model

    def reparam_sites(self, model: nn.Module) -> list[ReparamSite]:
        sites = []
        for i, block in enumerate(model.blocks):
            sites.append(layernorm_site(block.norm1, block.attn.qkv, f"blocks.{i}.norm1"))
            sites.append(layernorm_site(block.norm2, block.mlp.fc1, f"blocks.{i}.norm2"))
            sites.append(activation_site(block.mlp, f"blocks.{i}.mlp.act"))
        return sites

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]

    def embedding(self, model: nn.Module) -> nn.Module:
        """patch_embed -> class (and distillation) token, position embedding -> patch_drop -> norm_pre."""
        return ModelPart(present(model, "patch_embed", "pos_drop", "patch_drop", "norm_pre"),
                         lambda x: model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x)))))

    def head(self, model: nn.Module) -> nn.Module:
        """norm -> pooling -> fc_norm -> head (DeiT-distilled: the mean of head and head_dist)."""
        return ModelPart(present(model, "norm", "fc_norm", "head", "head_dist"),
                         lambda x: model.forward_head(model.norm(x)))


register_adapter(ViTAdapter())
