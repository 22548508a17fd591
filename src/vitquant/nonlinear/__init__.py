"""Integer non-linear ops in the quantized model: which kernel runs where (config), and the mixed
per-layer selection by SQNR (I-ViT, I-BERT, FQ-ViT; Mixed Non-linear Quantization)."""

from vitquant.nonlinear.config import CHOICES, RULES, SOFTMAX_OUT_BITS, NonlinearConfig

__all__ = ["CHOICES", "RULES", "SOFTMAX_OUT_BITS", "NonlinearConfig"]
