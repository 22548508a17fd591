"""The calibration pipeline (RepQ-ViT): model + calibration images -> quantized model + report.

1. prepare: the family adapter makes every quantization point explicit; the QConfig assigns specs;
2. quantize all weights (per output channel);
3. calibrate: one forward over the calibration batch in ``Mode.CALIBRATE``; each point fits its
   quantizer on what reaches it, so later points see quantized inputs;
4. reparameterize post-LayerNorm points (per-channel -> per-tensor) and re-quantize those weights;
5. switch to ``Mode.QUANTIZE`` and count the levels every point really uses on the calibration batch.

The float model passed in is left untouched; the quantized model is a copy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitquant.errors import DataError, NumericalError
from vitquant.models.adapters import adapter_for
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import Mode, QuantPoint, quant_points, set_level_tracking, set_mode
from vitquant.qconfig import POST_SOFTMAX, WEIGHT, QConfig
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.reparam import reparameterize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointReport:
    """What one quantization point does: its spec, its level bound and the levels it used."""

    name: str
    role: str
    quantizer: str
    bits: int
    max_levels: int
    levels_used: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CalibrationResult:
    """The quantized model and what calibration did."""

    model: nn.Module
    qconfig: QConfig
    images: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reparameterized: int = 0
    points: list[PointReport] = field(default_factory=list)

    def role_summary(self, role: str) -> dict[str, Any]:
        """Bound and used levels over all points of one role (e.g. post_softmax)."""
        rows = [p for p in self.points if p.role == role]
        used = [p.levels_used for p in rows if p.levels_used is not None]
        return {
            "points": len(rows),
            "quantizer": sorted({p.quantizer for p in rows}),
            "max_levels": max((p.max_levels for p in rows), default=0),
            "levels_used_min": min(used, default=0),
            "levels_used_max": max(used, default=0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "reparameterized_layers": self.reparameterized,
            "attention_levels": self.role_summary(POST_SOFTMAX),
            "points": [p.to_dict() for p in self.points],
        }


def check_images(images: torch.Tensor, what: str = "calibration images") -> None:
    """A non-empty, finite float batch ``[N, 3, H, W]``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{what} must be a float tensor [N, 3, H, W], got {shape}")
    if images.shape[0] == 0:
        raise DataError(f"{what}: empty calibration set (0 images)")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise NumericalError(f"{what} must be finite floating-point values")


def prepare(model: nn.Module, qconfig: QConfig) -> nn.Module:
    """Make the quantization points of ``model`` explicit (in place) and give each its spec."""
    adapter_for(model).prepare(model)
    for name, module in model.named_modules():
        if isinstance(module, QuantPoint):
            module.point_name = name
            module.spec = qconfig.spec_for(name, module.role)
        elif isinstance(module, WeightQuantMixin):
            module.layer_name = name
            module.weight_spec = qconfig.spec_for(f"{name}.weight", WEIGHT)
    return model


def _weight_reports(model: nn.Module) -> list[PointReport]:
    reports = []
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantMixin) and module.weight_quantizer is not None:
            quantizer = module.weight_quantizer
            reports.append(
                PointReport(
                    name=f"{name}.weight",
                    role=WEIGHT,
                    quantizer=module.weight_spec.name if module.weight_spec else "?",
                    bits=quantizer.bits,
                    max_levels=quantizer.max_levels,
                    levels_used=quantizer.levels_used(module.weight.detach()),
                )
            )
    return reports


def _quantizer_name(point: QuantPoint) -> str:
    """The spec's name, marking per-channel points made per-tensor by reparameterization."""
    assert point.spec is not None
    if point.spec.per_channel and isinstance(point.quantizer, UniformQuantizer) and not point.quantizer.per_channel:
        return "uniform (per-tensor after reparam)"
    return point.spec.name


def _point_reports(model: nn.Module) -> list[PointReport]:
    reports = []
    for name, point in quant_points(model):
        if point.quantizer is None or point.spec is None:
            continue
        reports.append(
            PointReport(
                name=name,
                role=point.role,
                quantizer=_quantizer_name(point),
                bits=point.quantizer.bits,
                max_levels=point.quantizer.max_levels,
                levels_used=point.levels_used,
            )
        )
    return reports


def fingerprint_points(model: nn.Module) -> list[tuple[str, Any, list[int] | None]]:
    """(name, fitted quantizer, histogram of codes used) for every weight and activation point."""
    rows: list[tuple[str, Any, list[int] | None]] = []
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantMixin) and module.weight_quantizer is not None:
            q = module.weight_quantizer
            counts = torch.bincount(q.codes(module.weight.detach()).reshape(-1), minlength=q.max_levels)
            rows.append((f"{name}.weight", q, counts.tolist()))
    for name, point in quant_points(model):
        if point.quantizer is not None:
            counts = None if point.level_counts is None else point.level_counts.tolist()
            rows.append((name, point.quantizer, counts))
    return rows


def quantize_model(model: nn.Module, calib_images: torch.Tensor, qconfig: QConfig) -> CalibrationResult:
    """Run the pipeline on a copy of ``model``; returns the quantized model (in ``Mode.QUANTIZE``)."""
    check_images(calib_images)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    qmodel = prepare(copy.deepcopy(model).eval(), qconfig)
    adapter = adapter_for(model)

    t = time.perf_counter()
    for module in qmodel.modules():
        if isinstance(module, WeightQuantMixin):
            module.quantize_weight()
    stages["weights"] = time.perf_counter() - t

    t = time.perf_counter()
    set_mode(qmodel, Mode.CALIBRATE)
    with torch.no_grad():
        qmodel(calib_images)
    stages["activations"] = time.perf_counter() - t

    t = time.perf_counter()
    reparameterized = reparameterize(adapter.reparam_pairs(qmodel)) if qconfig.reparam else 0
    stages["reparameterization"] = time.perf_counter() - t
    set_mode(qmodel, Mode.QUANTIZE)
    seconds = time.perf_counter() - start

    t = time.perf_counter()
    set_level_tracking(qmodel, True)
    with torch.no_grad():
        logits = qmodel(calib_images)
    set_level_tracking(qmodel, False)
    if not torch.isfinite(logits).all():
        raise NumericalError("the quantized model produced NaN/inf logits on the calibration images")
    stages["level_count"] = time.perf_counter() - t

    points = _weight_reports(qmodel) + _point_reports(qmodel)
    log.info("calibrated %d points on %d images in %.2f s", len(points), calib_images.shape[0], seconds)
    return CalibrationResult(
        model=qmodel,
        qconfig=qconfig,
        images=int(calib_images.shape[0]),
        seconds=seconds,
        stage_seconds=stages,
        reparameterized=reparameterized,
        points=points,
    )
