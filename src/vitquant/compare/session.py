"""``vitquant compare``: several variants on one model and one set of images, in one process.

model + calibration images + evaluation images (decoded once) -> FP logits (once) -> per variant:
calibrate, evaluate on the same batches, time against FP in turns, per-point SQNR, and the data of the
figures (what the attention map and post-GELU points see, and the grid each variant puts on them)
-> one results dict (:mod:`vitquant.compare.render` writes it out).

A variant that fails at run time (e.g. NaN logits) is recorded with its error and the others go on; a
variant that cannot even be configured fails the whole command before any heavy work.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitquant import __version__
from vitquant.calibration import prepare, quantize_model
from vitquant.compare.histograms import histogram, log_histogram
from vitquant.compare.plan import Variant
from vitquant.data import data_config, eval_transform, load_images, make_loader
from vitquant.errors import ConfigError, DataError, VitQuantError
from vitquant.evaluation import ClassificationMeter, FidelityMeter, compare_throughput
from vitquant.evaluation.evaluate import timed_forward
from vitquant.evaluation.distributed import current_shard, resolve_device
from vitquant.evaluation.point_sqnr import capture_inputs, point_sqnr
from vitquant.models import create_model, resolve_model_name
from vitquant.nn.quant_point import QuantPoint, quant_points
from vitquant.paths import source_commit
from vitquant.qconfig import POST_GELU, POST_SOFTMAX
from vitquant.quantizers.grid import grid_of, linear_sweep, log_sweep
from vitquant.workflow import QuantizeJob, check_labels, resolve_data

__all__ = ["CompareJob", "run_compare"]

log = logging.getLogger(__name__)

GELU_PANELS = 4  # post-GELU layers drawn (first, last and evenly between)


@dataclass
class CompareJob:
    """The model and images every variant shares, and how the comparison is measured."""

    model: str = "deit_tiny"
    weights: Path | None = None
    calib_data: Path | None = None
    calib_size: int = 32
    eval_data: Path | None = None
    eval_size: int | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int = 0
    crop_pct: float | None = None
    on_bad_image: str = "error"
    device: str = "cpu"
    timing_batch: int = 32  # images of the throughput comparison (from the evaluation images)
    repeats: int = 3  # timing rounds, FP and quantized in turns
    figure_images: int = 8  # evaluation images the per-point SQNR and the histograms are measured on
    attention_layer: str | None = None  # post-softmax point of the attention figure (default: the middle one)
    progress: bool = True

    def quantize_job(self, variant: Variant | None = None) -> QuantizeJob:
        """The QuantizeJob of ``variant`` on these images (validated), or of the data alone."""
        shared = {f.name: getattr(self, f.name) for f in fields(QuantizeJob) if hasattr(self, f.name)}
        job = QuantizeJob(**{**shared, **({} if variant is None else variant.job_fields())})
        job.validate()
        return job

    def validate(self) -> None:
        for name in ("timing_batch", "repeats", "figure_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if current_shard().sharded:
            raise ConfigError("vitquant compare runs in one process: start it without torchrun")


def _forward_all(model: nn.Module, batches: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """Logits of every batch (on the CPU) and the seconds spent in the forwards."""
    outs, seconds = [], 0.0
    for images in batches:
        logits, elapsed = timed_forward(model, images, device)
        outs.append(logits.float().cpu())
        seconds += elapsed
    return torch.cat(outs), seconds


def _points_of(model: nn.Module, role: str) -> list[tuple[str, QuantPoint]]:
    return [(n, p) for n, p in quant_points(model) if p.role == role and p.quantizer is not None]


def _spread(items: list, count: int) -> list:
    """``count`` items spread evenly from the first to the last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _attention_point(points: list[tuple[str, QuantPoint]], wanted: str | None) -> tuple[str, QuantPoint] | None:
    """The post-softmax point of the attention figure among ``points``: ``wanted`` (a point or a module
    above one), by default the middle one."""
    if wanted is None:
        return points[len(points) // 2] if points else None
    for name, point in points:
        if name == wanted or name.startswith(wanted + "."):
            return name, point
    raise ConfigError(f"--attention-layer {wanted!r} is not a post-softmax point of this model; "
                      f"choose from {', '.join(n for n, _ in points)}")


def figure_data(qmodel: nn.Module, images: torch.Tensor, attention_layer: str | None) -> dict[str, Any]:
    """What the figures draw for one calibrated model: the histogram of the attention map at one layer
    and of the post-GELU input at a few layers (in float mode: the data), each with the grid the
    model's quantizer puts on it."""
    chosen = _attention_point(_points_of(qmodel, POST_SOFTMAX), attention_layer)
    gelu = _spread(_points_of(qmodel, POST_GELU), GELU_PANELS)
    wanted = ([chosen] if chosen else []) + gelu
    seen = capture_inputs(qmodel, [n for n, _ in wanted], [images])
    out: dict[str, Any] = {"attention": None, "post_gelu": []}
    if chosen is not None:
        name, point = chosen
        data = seen[name]
        grid = grid_of(point.quantizer, data.shape, point.head_dim, log_sweep())
        out["attention"] = {"point": name, "quantizer": type(point.quantizer).__name__,
                            "histogram": log_histogram(data.values), "grid": grid.to_dict()}
    for name, point in gelu:
        data = seen[name]
        low, high = float(data.values.min()), float(data.values.max())
        pad = 0.05 * max(high - low, 1e-6)
        start = max(low - pad, 0.0) if point.spec is not None and point.spec.nonnegative else low - pad
        grid = grid_of(point.quantizer, data.shape, point.channel_dim, linear_sweep(start, high + pad))
        out["post_gelu"].append({"point": name, "quantizer": type(point.quantizer).__name__,
                                 "histogram": histogram(data.values), "grid": grid.to_dict()})
    return out


def _check_attention_layer(model: nn.Module, variant_job: QuantizeJob, wanted: str | None) -> None:
    """An ``--attention-layer`` that names no post-softmax point fails the command before any calibration
    (found on a prepared copy of the model: the points exist before they are fitted)."""
    if wanted is not None:
        prepared = prepare(copy.deepcopy(model), variant_job.qconfig())
        _attention_point([(n, p) for n, p in quant_points(prepared) if p.role == POST_SOFTMAX], wanted)


def _levels(result: Any) -> dict[str, Any]:
    return {role: result.role_summary(role) for role in (POST_SOFTMAX, POST_GELU)}


class _Shared:
    """The model, the images and the FP pass every variant is measured against."""

    def __init__(self, job: CompareJob) -> None:
        data_job = job.quantize_job()
        self.device = resolve_device(job.device, current_shard())
        self.data = resolve_data(data_job)
        self.model, self.weights_source = create_model(job.model, job.weights)
        check_labels(self.data, self.model)
        self.model = self.model.to(self.device).eval()
        transform = eval_transform(self.model, job.crop_pct)
        t = time.perf_counter()
        calib = load_images(self.data.calibration, transform, job.on_bad_image)
        self.calib_images = calib.images.to(self.device)
        batches, labels, skipped = [], [], list(calib.skipped)
        loader = make_loader(self.data.evaluation, transform, job.batch_size, job.workers, job.on_bad_image)
        for batch in loader:
            skipped.extend(batch.skipped)
            if batch.labels.numel():
                batches.append(batch.images)
                labels.append(batch.labels)
        if not batches:
            raise DataError("no evaluation image could be decoded")
        self.batches, self.labels, self.skipped = batches, torch.cat(labels), skipped
        self.decode_seconds = time.perf_counter() - t
        log.info("decoded %d calibration and %d evaluation images once (%.1f s)",
                 len(self.calib_images), len(self.labels), self.decode_seconds)
        self.fp_logits, self.fp_seconds = _forward_all(self.model, self.batches, self.device)
        everything = torch.cat(self.batches)
        self.timing_batch = everything[: job.timing_batch].to(self.device)
        self.figure_batch = everything[: job.figure_images].to(self.device)
        self.transform_config = data_config(self.model, job.crop_pct)


def _ratio(quantized: float, fp: float) -> float | None:
    """Quantized / FP images per second; None where a timing was too short to give a finite ratio."""
    ratio = quantized / fp if fp > 0 else float("inf")
    return ratio if math.isfinite(ratio) else None


def _meter(logits: torch.Tensor, labels: torch.Tensor) -> ClassificationMeter:
    meter = ClassificationMeter()
    meter.update(logits, labels)
    return meter


def _run_variant(shared: _Shared, job: CompareJob, variant: Variant) -> dict[str, Any]:
    qjob = job.quantize_job(variant)
    qconfig = qjob.qconfig()
    skipped = [name for name, on in (("block reconstruction", qjob.reconstruct), ("compensation", qjob.compensate != "none")) if on]
    if skipped:  # compare measures calibration: the quantizers as fitted, side by side
        log.warning("%s: compare measures calibration only; the recipe's %s is not run (use vitquant quantize)",
                    variant.name, " and ".join(skipped))
    row: dict[str, Any] = {"variant": variant.name, "label": variant.label, "recipe": variant.recipe,
                           "w_bits": variant.w_bits, "a_bits": variant.a_bits, "options": dict(variant.options)}
    start = time.perf_counter()
    result = quantize_model(shared.model, shared.calib_images, qconfig, progress=job.progress)
    logits, seconds = _forward_all(result.model, shared.batches, shared.device)
    meter = _meter(logits, shared.labels)
    fidelity = FidelityMeter()
    fidelity.update(shared.fp_logits, logits)
    fp_ips, q_ips = compare_throughput([shared.model, result.model], shared.timing_batch, repeats=job.repeats)
    sqnr = point_sqnr(result.model, [shared.figure_batch])
    row.update({
        "status": "ok", "top1": meter.top1, "top5": meter.top5, "agreement": fidelity.top1_agreement,
        "mean_kl": fidelity.mean_kl, "calibration_seconds": result.seconds,
        "images_per_second": len(shared.labels) / seconds if seconds > 0 else None,
        "relative_throughput": _ratio(q_ips, fp_ips), "levels": _levels(result),
        "point_sqnr": [p.to_dict() for p in sqnr],
        "figures": figure_data(result.model, shared.figure_batch, job.attention_layer),
        "nonlinear": None if result.nonlinear is None else result.nonlinear.to_dict(),
        "qconfig": result.qconfig.to_dict(), "seconds": time.perf_counter() - start,
    })
    log.info("%s: top-1 %.2f %%, agreement %.2f %%, KL %.4f, calibration %.1f s, %.2fx FP throughput",
             variant.name, meter.top1, fidelity.top1_agreement, fidelity.mean_kl, result.seconds, q_ips / fp_ips if fp_ips else 0.0)
    return row


def run_compare(job: CompareJob, variants: Sequence[Variant]) -> dict[str, Any]:
    """Run every variant on the shared images; the results dict (rows, FP row, figure data, provenance)."""
    job.validate()
    if not variants:
        raise ConfigError("nothing to compare: no variants")
    for variant in variants:  # every configuration error before any heavy work
        job.quantize_job(variant).qconfig()
    torch.manual_seed(job.seed)
    shared = _Shared(job)
    _check_attention_layer(shared.model, job.quantize_job(variants[0]), job.attention_layer)
    fp = _meter(shared.fp_logits, shared.labels)
    rows = []
    for i, variant in enumerate(variants, 1):
        log.info("variant %d/%d: %s", i, len(variants), variant.name)
        try:
            rows.append(_run_variant(shared, job, variant))
        except VitQuantError as exc:
            log.warning("%s failed: %s", variant.name, exc)
            rows.append({"variant": variant.name, "label": variant.label, "recipe": variant.recipe,
                         "w_bits": variant.w_bits, "a_bits": variant.a_bits, "options": dict(variant.options),
                         "status": "failed", "error": str(exc)})
    return {
        "model": resolve_model_name(job.model), "weights": shared.weights_source,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(job).items() if k != "progress"},
        "calib_dir": str(shared.data.calib_dir.resolve()), "eval_dir": str(shared.data.eval_dir.resolve()),
        "calibration_images": len(shared.calib_images), "evaluation_images": len(shared.labels),
        "skipped_images": shared.skipped, "decode_seconds": shared.decode_seconds,
        "transform": {k: (list(v) if isinstance(v, tuple) else v) for k, v in shared.transform_config.items()},
        "fp": {"top1": fp.top1, "top5": fp.top5,
               "images_per_second": len(shared.labels) / shared.fp_seconds if shared.fp_seconds > 0 else None},
        "rows": rows, "device": str(shared.device), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "torch": torch.__version__,
        "vitquant": __version__, **source_commit(),
    }
