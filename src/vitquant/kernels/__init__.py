"""Integer kernels for Softmax, GELU and LayerNorm (I-ViT, I-BERT, FQ-ViT), with exact float simulation.

- :mod:`~vitquant.kernels.arith`: the two backends (int64, float64 simulation) kernels are written against;
- :mod:`~vitquant.kernels.base`: the kernel contract and registry by (family, op);
- :mod:`~vitquant.kernels.ivit`, :mod:`~vitquant.kernels.ibert`, :mod:`~vitquant.kernels.fqvit`: the families;
- :mod:`~vitquant.kernels.isqrt`, :mod:`~vitquant.kernels.dyadic`: shared integer building blocks.
"""

from vitquant.kernels.arith import FLOAT, INT, Arith
from vitquant.kernels.base import FAMILIES, OPS, IntKernel, kernel_choices, make_kernel, register_kernel

__all__ = ["FAMILIES", "FLOAT", "INT", "OPS", "Arith", "IntKernel", "kernel_choices", "make_kernel", "register_kernel"]
