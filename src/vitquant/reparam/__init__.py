"""Model reparameterizations that keep the float function and make quantization easier."""

from vitquant.reparam.scale_reparam import reparameterize, reparameterize_pair

__all__ = ["reparameterize", "reparameterize_pair"]
