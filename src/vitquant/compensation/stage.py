"""Compensation as a pipeline stage after calibration (and reconstruction): calibrated model ->
compensated model.

``qwt`` (QwT, CVPR 2025): block by block, in order, on the calibration images,

1. the block's input ``x`` in the quantized model, every earlier block already compensated;
2. the quantized block's output and the full-precision block's output on that same ``x``;
3. ``W, b`` by least squares (:func:`~vitquant.compensation.linear.fit_linear`) on the difference;
4. the correction becomes a quantized Linear on the block's input, ``block.compensation``, and its
   output is added through one more residual add, ``block.add_comp``
   (:meth:`~vitquant.nn.blocks._ResidualAdds.compensate`): weights per output channel and input per
   tensor, uniform at ``bits`` (8: 256 levels each); the add is integer, on its own 24-bit
   fixed-point step fitted on both operands, when the block's other adds are, and float otherwise.

Deviation from the published QwT: the compensation is quantized (the published one stays in float),
so that the model still converts to an integer program; and the least squares carry a small ridge.
Units are the model adapter's blocks (Swin's patch merging, which changes the shape, is left as it
is). The calibrated model passed in is left untouched: the result holds a compensated copy.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitquant.calibration.passes import first_unit_input, forward_chunked
from vitquant.calibration.pipeline import CalibrationResult, check_images, recount
from vitquant.compensation.config import CompensationConfig
from vitquant.compensation.linear import fit_linear
from vitquant.errors import ConfigError
from vitquant.models.adapters import adapter_for
from vitquant.nn.linear import QuantLinear
from vitquant.nn.quant_point import Mode
from vitquant.nn.residual import QuantResidualAdd
from vitquant.quantizers.spec import make_spec

log = logging.getLogger(__name__)

CHUNK = 16  # images per forward
ROLE = "compensation"  # role of the compensation Linear's input point


@dataclass
class UnitReport:
    """One compensated block: its output error (mean square against the full-precision block on the same
    input) before and after, and the r² of the least-squares fit."""

    name: str
    error_before: float
    error_after: float
    r2: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "error_before": self.error_before, "error_after": self.error_after, "r2": self.r2}


@dataclass
class CompensationResult:
    """The compensated model, its calibration result brought up to date (levels), and per block the fit."""

    model: nn.Module
    calibration: CalibrationResult
    config: CompensationConfig
    images: int
    seconds: float
    units: list[UnitReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.config.to_dict(), "images": self.images, "seconds": self.seconds,
                "units": [u.to_dict() for u in self.units]}


Method = Callable[[nn.Module, CalibrationResult, torch.Tensor, CompensationConfig, bool], CompensationResult]
_METHODS: dict[str, Method] = {}


def register_compensation(name: str) -> Callable[[Method], Method]:
    """Register a compensation method under ``name`` (``CompensationConfig(method=name)``)."""

    def add(fn: Method) -> Method:
        _METHODS[name] = fn
        return fn

    return add


def compensation_methods() -> list[str]:
    return list(_METHODS)


def compensate(float_model: nn.Module, calibrated: CalibrationResult, images: torch.Tensor,
               config: CompensationConfig | None = None, progress: bool = False) -> CompensationResult:
    """Compensate a copy of ``calibrated.model`` against ``float_model`` on ``images`` (calibration
    images, never evaluation ones) with the method ``config.method``."""
    config = config or CompensationConfig()
    if config.method not in _METHODS:
        raise ConfigError(f"unknown compensation {config.method!r}; choose one of {', '.join(_METHODS)}")
    check_images(images, "compensation images")
    return _METHODS[config.method](float_model, calibrated, images, config, progress)


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, bits: int, name: str) -> QuantLinear:
    """``x·weightᵀ + bias`` as a calibrated QuantLinear: weights per output channel and the input per
    tensor, uniform at ``bits``, the input quantizer fitted on ``inputs`` (RepQ-ViT's percentile rule)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], device=inputs.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    layer = QuantLinear.from_float(linear, ROLE)
    layer.layer_name = name
    layer.weight_spec = make_spec("uniform", bits=bits, granularity="channel")
    layer.quantize_weight()
    point = layer.input_quant
    point.point_name = f"{name}.input_quant"
    point.spec = make_spec("uniform", bits=bits)
    point.set_quantizer(point.spec.fit(inputs.reshape(-1, inputs.shape[-1]), where=point.point_name))
    layer.mode = point.mode = Mode.QUANTIZE
    return layer


def _residual_add(block: nn.Module, out: torch.Tensor, correction: torch.Tensor, name: str) -> QuantResidualAdd:
    """The add of the correction: integer (a fixed-point step fitted on both operands, the block's own
    residual format) when the block's adds are, float otherwise."""
    add = QuantResidualAdd().to(out.device)
    add.layer_name = name
    point = block.add_mlp.residual_quant
    if point is not None and point.mode is Mode.QUANTIZE:
        add.set_spec(point.spec)
        rp = add.residual_quant
        assert rp is not None
        rp.point_name = f"{name}.residual_quant"
        rp.set_quantizer(rp.spec.fit(torch.cat([out.reshape(-1), correction.reshape(-1)]), where=rp.point_name))
        rp.mode = Mode.QUANTIZE
        add.to(out.device)
    return add


@register_compensation("qwt")
def qwt(float_model: nn.Module, calibrated: CalibrationResult, images: torch.Tensor, config: CompensationConfig,
        progress: bool = False) -> CompensationResult:
    """QwT: per block, in order, a quantized linear correction of its output from its input (module docstring)."""
    start = time.perf_counter()
    qmodel = copy.deepcopy(calibrated.model).eval()
    float_model = float_model.eval()
    q_units = adapter_for(qmodel).reconstruction_units(qmodel, ends=False)
    f_units = dict(adapter_for(float_model).reconstruction_units(float_model, ends=False))
    if set(f_units) != {n for n, _ in q_units}:
        raise ConfigError("the float model's blocks do not match the calibrated model's")
    x = first_unit_input(qmodel, q_units, images, CHUNK)
    reports = []
    for name, unit in q_units:
        if hasattr(unit, "compensate") and getattr(unit, "compensation", None) is not None:
            raise ConfigError(f"{name} is already compensated")
        if not hasattr(unit, "compensate"):  # e.g. Swin's patch merging: another shape out than in
            x = forward_chunked(unit, x, CHUNK)
            continue
        y_q, y_f = forward_chunked(unit, x, CHUNK), forward_chunked(f_units[name], x, CHUNK)
        tokens = x.reshape(-1, x.shape[-1])
        w, b, r2 = fit_linear(tokens, (y_f - y_q).reshape(tokens.shape[0], -1), config.ridge)
        unit.compensation = quantized_linear(w.T.contiguous(), b, tokens, config.bits, f"{name}.compensation")
        with torch.no_grad():
            correction = torch.cat([unit.compensation(t) for t in tokens.split(CHUNK * 256)])
        unit.add_comp = _residual_add(unit, y_q, correction, f"{name}.add_comp")
        x = forward_chunked(unit, x, CHUNK)
        report = UnitReport(name, float((y_f - y_q).pow(2).mean()), float((y_f - x).pow(2).mean()), r2)
        log.info("%s: output error %.4g -> %.4g (r2 %.3f)", name, report.error_before, report.error_after, r2)
        reports.append(report)
    if not reports:
        raise ConfigError("compensation needs transformer blocks with explicit residual adds; this model has none")
    refreshed = recount(calibrated, qmodel, list(images.split(CHUNK)), "compensation images")
    seconds = time.perf_counter() - start
    log.info("compensated %d blocks on %d images in %.1f s", len(reports), images.shape[0], seconds)
    return CompensationResult(qmodel, refreshed, config, int(images.shape[0]), seconds, reports)
