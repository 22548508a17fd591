"""timm model names, weights and family adapters."""

from vitquant.models.adapters import ModelAdapter, ReparamSite, adapter_for
from vitquant.models.registry import SHORT_NAMES, resolve_model_name
from vitquant.models.weights import create_model, load_state_dict

__all__ = [
    "SHORT_NAMES",
    "ModelAdapter",
    "ReparamSite",
    "adapter_for",
    "create_model",
    "load_state_dict",
    "resolve_model_name",
]
