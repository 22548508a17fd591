"""Model names: the short names of the BitLog2/RepQ-ViT experiments and any timm ViT/DeiT/Swin name."""

from __future__ import annotations

import timm

from vitquant.errors import ConfigError

SHORT_NAMES: dict[str, str] = {
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
}


def resolve_model_name(name: str) -> str:
    """Short name (``deit_tiny``) or timm name (``deit_tiny_patch16_224[.tag]``) -> timm name."""
    key = name.strip()
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    if not timm.is_model(key):
        raise ConfigError(
            f"unknown model {name!r}: use one of {', '.join(SHORT_NAMES)} or a timm ViT/DeiT/Swin model name"
        )
    return key
