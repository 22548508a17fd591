"""The calibration pipeline: model + calibration images -> quantized model."""

from vitquant.calibration.pipeline import (
    CalibrationResult,
    PointReport,
    check_images,
    fingerprint_points,
    prepare,
    quantize_model,
)

__all__ = ["CalibrationResult", "PointReport", "check_images", "fingerprint_points", "prepare", "quantize_model"]
