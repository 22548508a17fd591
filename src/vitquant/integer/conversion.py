"""The public conversion entry point: a calibrated model of any supported family -> integer program."""

from __future__ import annotations

from torch import nn

from vitquant.errors import ConfigError
from vitquant.integer.program import IntegerProgram


def convert_model(qmodel: nn.Module) -> IntegerProgram:
    """The integer program of a calibrated timm ``VisionTransformer`` (ViT, DeiT, DeiT-distilled:
    :func:`~vitquant.integer.convert.convert_vit`) or ``SwinTransformer``
    (:func:`~vitquant.integer.convert_swin.convert_swin`); any other model: :class:`ConfigError`."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(qmodel, SwinTransformer):
        from vitquant.integer.convert_swin import convert_swin

        return convert_swin(qmodel)
    if isinstance(qmodel, VisionTransformer):
        from vitquant.integer.convert import convert_vit

        return convert_vit(qmodel)
    raise ConfigError(
        "integer conversion supports ViT/DeiT (timm VisionTransformer) and Swin (timm SwinTransformer) models, "
        f"got {type(qmodel).__name__}"
    )
