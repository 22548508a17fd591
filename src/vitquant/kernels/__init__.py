"""Integer kernels: Softmax, GELU, LayerNorm (I-ViT, I-BERT, FQ-ViT) with exact float simulation; exact matmuls.

- :mod:`~vitquant.kernels.arith`: the two backends (int64, float64 simulation) kernels are written against;
- :mod:`~vitquant.kernels.base`: the kernel contract and registry by (family, op);
- :mod:`~vitquant.kernels.ivit`, :mod:`~vitquant.kernels.ibert`, :mod:`~vitquant.kernels.fqvit`: the families;
- :mod:`~vitquant.kernels.isqrt`, :mod:`~vitquant.kernels.dyadic`: shared integer building blocks;
- :mod:`~vitquant.kernels.gemm`: exact integer matrix products (int64, or float GEMMs within a bound).
"""

from vitquant.kernels.arith import FLOAT, INT, Arith
from vitquant.kernels.base import FAMILIES, OPS, IntKernel, kernel_choices, make_kernel, register_kernel
from vitquant.kernels.gemm import FloatPlan, exact_float_plan, int_linear, int_matmul

__all__ = [
    "FAMILIES", "FLOAT", "INT", "OPS", "Arith", "FloatPlan", "IntKernel", "exact_float_plan", "int_linear",
    "int_matmul", "kernel_choices", "make_kernel", "register_kernel",
]
