"""Closed-form compensation of quantization error after calibration (QwT, CVPR 2025).

calibrated model + calibration images -> compensated model: each transformer block gets a linear
correction of its output from its input, fitted by least squares, with no gradient steps.
Methods are registered by name (:func:`register_compensation`); ``qwt`` is the one shipped.
"""

from vitquant.compensation.config import CompensationConfig
from vitquant.compensation.linear import fit_linear
from vitquant.compensation.stage import (
    CompensationResult,
    UnitReport,
    compensate,
    compensation_methods,
    register_compensation,
)

__all__ = [
    "CompensationConfig",
    "CompensationResult",
    "UnitReport",
    "compensate",
    "compensation_methods",
    "fit_linear",
    "register_compensation",
]
