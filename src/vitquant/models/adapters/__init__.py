"""One adapter per timm model family; importing this package registers them."""

from vitquant.models.adapters import swin, vit  # noqa: F401  (registration side effect)
from vitquant.models.adapters.base import ModelAdapter, ReparamSite, adapter_for, register_adapter

__all__ = ["ModelAdapter", "ReparamSite", "adapter_for", "register_adapter"]
