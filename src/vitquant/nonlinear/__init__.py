"""Integer non-linear ops in the quantized model: which kernel runs where (config), and the mixed
per-layer selection by SQNR (I-ViT, I-BERT, FQ-ViT; Mixed Non-linear Quantization)."""

from vitquant.nonlinear.config import CHOICES, RULES, NonlinearConfig, default_bits

__all__ = ["CHOICES", "RULES", "NonlinearConfig", "default_bits"]
