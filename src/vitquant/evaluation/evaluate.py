"""One pass over a labelled loader: fp and quantized forwards on the same decoded batch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from vitquant.errors import ConfigError, DataError
from vitquant.evaluation.metrics import ClassificationMeter, FidelityMeter

__all__ = ["ModelRun", "compare_throughput", "evaluate_pair", "measure_throughput"]

log = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """Accuracy of one model plus the time spent in its forward passes only."""

    meter: ClassificationMeter
    forward_seconds: float
    images: int

    @property
    def images_per_second(self) -> float:
        """Images divided by forward time (0.0 for no images, inf if no time was measured)."""
        if self.images == 0:
            return 0.0
        if self.forward_seconds <= 0.0:
            return float("inf")
        return self.images / self.forward_seconds


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for stateless modules."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timing covers the whole forward."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_forward(model: nn.Module, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """Run ``model(images)`` under inference mode; return logits and elapsed seconds."""
    images = images.to(device, non_blocking=True)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        logits = model(images)
        _sync(device)
        elapsed = time.perf_counter() - start
    return logits, elapsed


def _split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)`` from a ``(images, labels, ...)`` batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(f"loader must yield (images, labels) pairs, got {type(batch).__name__}")
    images, labels = batch[0], batch[1]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(
            f"loader must yield tensors, got ({type(images).__name__}, {type(labels).__name__})"
        )
    return images, labels


class _Runner:
    """Accumulates accuracy and forward time for one model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.device = _model_device(model)
        self.meter = ClassificationMeter()
        self.seconds = 0.0

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward one batch, update the meter, return the logits."""
        logits, elapsed = _timed_forward(self.model, images, self.device)
        self.seconds += elapsed
        self.meter.update(logits, labels)
        return logits

    def result(self) -> ModelRun:
        """Freeze the accumulated numbers into a :class:`ModelRun`."""
        return ModelRun(meter=self.meter, forward_seconds=self.seconds, images=self.meter.images)


def evaluate_pair(
    fp_model: nn.Module,
    q_model: nn.Module | None,
    loader: Iterable,
    progress: bool = True,
    desc: str = "evaluating",
) -> tuple[ModelRun, ModelRun | None, FidelityMeter | None]:
    """Evaluate ``fp_model`` and (optionally) ``q_model`` in one pass over ``loader``.

    Each batch is decoded once and fed to the fp model, then the quantized model.
    Returns ``(fp_run, q_run, fidelity)``; the last two are ``None`` without ``q_model``.
    Raises :class:`DataError` if the loader yields no images.
    """
    fp = _Runner(fp_model)
    q = _Runner(q_model) if q_model is not None else None
    fidelity = FidelityMeter() if q_model is not None else None
    bar = tqdm(loader, desc=desc, unit="batch", file=sys.stderr, disable=not progress)
    for batch in bar:
        images, labels = _split_batch(batch)
        fp_logits = fp.step(images, labels)
        if q is not None and fidelity is not None:
            q_logits = q.step(images, labels)
            fidelity.update(fp_logits, q_logits)
    if fp.meter.images == 0:
        raise DataError("evaluation loader yielded no images")
    fp_run = fp.result()
    log.info("%s: fp top-1 %.2f%% on %d images", desc, fp_run.meter.top1, fp_run.images)
    q_run = q.result() if q is not None else None
    if q_run is not None and fidelity is not None:
        log.info(
            "%s: quantized top-1 %.2f%%, agreement %.2f%%, mean KL %.6f",
            desc, q_run.meter.top1, fidelity.top1_agreement, fidelity.mean_kl,
        )
    return fp_run, q_run, fidelity


def measure_throughput(model: nn.Module, batch: torch.Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Best-of-``repeats`` forward throughput (images/s) of ``model`` on ``batch``."""
    return compare_throughput([model], batch, repeats, warmup)[0]


def compare_throughput(
    models: Sequence[nn.Module], batch: torch.Tensor, repeats: int = 5, warmup: int = 1
) -> list[float]:
    """Best-of-``repeats`` images/s of each model on the same ``batch``, timed in turns.

    Each round times every model once, so a slow spell of the machine hits all of them alike and
    their ratio (e.g. quantized vs FP) is comparable.
    """
    if not models:
        raise ConfigError("compare_throughput needs at least one model")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if batch.dim() == 0 or batch.shape[0] == 0:
        raise ConfigError(f"batch must hold at least one image, got shape {tuple(batch.shape)}")
    devices = [_model_device(model.eval()) for model in models]
    inputs = [batch.to(device) for device in devices]
    for _ in range(warmup):
        for model, images, device in zip(models, inputs, devices):
            _timed_forward(model, images, device)
    best = [float("inf")] * len(models)
    for _ in range(repeats):
        for i, (model, images, device) in enumerate(zip(models, inputs, devices)):
            best[i] = min(best[i], _timed_forward(model, images, device)[1])
    return [batch.shape[0] / t if t > 0.0 else float("inf") for t in best]
