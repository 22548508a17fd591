"""Model reparameterizations that keep the float function and make quantization easier.

Importing this package registers every kind (:func:`reparam_for`).
"""

from vitquant.reparam.activation_shift import GELU_MIN_ABS, ActivationShift
from vitquant.reparam.base import (
    ACTIVATION_SHIFT,
    LAYERNORM_SCALE,
    Reparameterization,
    ReparamSite,
    reparam_for,
    register_reparam,
)
from vitquant.reparam.scale_reparam import LayerNormScale, reparameterize_pair

__all__ = [
    "ACTIVATION_SHIFT",
    "GELU_MIN_ABS",
    "LAYERNORM_SCALE",
    "ActivationShift",
    "LayerNormScale",
    "ReparamSite",
    "Reparameterization",
    "reparam_for",
    "register_reparam",
    "reparameterize_pair",
]
