"""The calibration pipeline: model + calibration images -> quantized model."""

from vitquant.calibration.pipeline import (
    CalibrationResult,
    PointReport,
    calibration_batches,
    check_images,
    count_levels,
    fingerprint_points,
    point_reports,
    prepare,
    quantize_model,
)

__all__ = [
    "CalibrationResult",
    "PointReport",
    "calibration_batches",
    "check_images",
    "count_levels",
    "fingerprint_points",
    "point_reports",
    "prepare",
    "quantize_model",
]
