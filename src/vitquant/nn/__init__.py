"""Quantizable layers and explicit quantization points."""

from vitquant.nn.attention import QuantViTAttention, QuantWindowAttention
from vitquant.nn.linear import QuantConv2d, QuantLinear
from vitquant.nn.matmul import QuantMatMul
from vitquant.nn.residual import QuantResidualAdd
from vitquant.nn.quant_point import Mode, QuantPoint, quant_points, set_level_tracking, set_mode

__all__ = [
    "Mode",
    "QuantConv2d",
    "QuantLinear",
    "QuantMatMul",
    "QuantPoint",
    "QuantResidualAdd",
    "QuantViTAttention",
    "QuantWindowAttention",
    "quant_points",
    "set_level_tracking",
    "set_mode",
]
