"""Adapter for timm ``SwinTransformer``.

As for ViT (residual adds as modules: :class:`~vitquant.nn.blocks.QuantSwinBlock`), plus the patch-merging ``reduction`` Linear whose input follows ``downsample.norm``.
Blocks whose feature map is zero-padded to whole windows (resolutions not divisible by the window)
keep a per-channel qkv input quantizer: the reparameterization would not be exact for them.
"""

from __future__ import annotations

import logging

from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention
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
from vitquant.nn.attention import QuantWindowAttention
from vitquant.nn.blocks import QuantSwinBlock

log = logging.getLogger(__name__)


def _pads_windows(block: SwinTransformerBlock) -> bool:
    """Whether the block zero-pads its post-norm1 feature map to whole windows.

    Padded tokens are zeros after the (reparameterized) LayerNorm, which no longer stand for zeros of
    the original one, so the norm1 -> qkv folding would not be exact there.
    """
    h, w = block.input_resolution
    wh, ww = block.window_size
    return h % wh != 0 or w % ww != 0


class SwinAdapter(ModelAdapter):
    family = "swin (timm SwinTransformer)"

    def supports(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def prepare(self, model: nn.Module) -> nn.Module:
        swap_patch_embed(model)
        for s, stage in enumerate(model.layers):
            if isinstance(stage.downsample, PatchMerging):
                swap_linear(stage.downsample, "reduction", qconfig.POST_LAYERNORM)
            for b, block in enumerate(stage.blocks):
                if not isinstance(block, SwinTransformerBlock) or type(block.attn) is not WindowAttention:
                    raise ConfigError(f"stage {s} block {b}: unsupported Swin block {type(block).__name__}")
                block = stage.blocks[b] = QuantSwinBlock.from_float(block)
                block.attn = QuantWindowAttention.from_float(block.attn)
                swap_linear(block.attn, "qkv", qconfig.POST_LAYERNORM)
                swap_linear(block.attn, "proj", qconfig.LINEAR_INPUT)
                swap_linear(block.mlp, "fc1", qconfig.POST_LAYERNORM)
                swap_linear(block.mlp, "fc2", qconfig.POST_GELU)
        swap_remaining_linears(model)
        swap_nonlinear(model)
        return model

    def reparam_sites(self, model: nn.Module) -> list[ReparamSite]:
        sites = []
        for s, stage in enumerate(model.layers):
            if isinstance(stage.downsample, PatchMerging):
                sites.append(layernorm_site(stage.downsample.norm, stage.downsample.reduction, f"layers.{s}.downsample.norm"))
            for b, block in enumerate(stage.blocks):
                prefix = f"layers.{s}.blocks.{b}"
                if _pads_windows(block):
                    log.info("%s.norm1: windows are zero-padded, qkv input stays per-channel", prefix)
                else:
                    sites.append(layernorm_site(block.norm1, block.attn.qkv, f"{prefix}.norm1"))
                sites.append(layernorm_site(block.norm2, block.mlp.fc1, f"{prefix}.norm2"))
                sites.append(activation_site(block.mlp, f"{prefix}.mlp.act"))
        return sites

    def units(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for s, stage in enumerate(model.layers):
            if isinstance(stage.downsample, PatchMerging):
                out.append((f"layers.{s}.downsample", stage.downsample))
            out += [(f"layers.{s}.blocks.{b}", block) for b, block in enumerate(stage.blocks)]
        return out

    def embedding(self, model: nn.Module) -> nn.Module:
        """patch_embed (convolution and norm, NHWC output)."""
        return ModelPart(present(model, "patch_embed"), lambda x: model.patch_embed(x))

    def head(self, model: nn.Module) -> nn.Module:
        """norm -> pooling -> fc."""
        return ModelPart(present(model, "norm", "head"), lambda x: model.forward_head(model.norm(x)))


register_adapter(SwinAdapter())
