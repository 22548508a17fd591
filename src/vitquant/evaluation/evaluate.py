"""One pass over a labelled loader: fp and quantized forwards on the same decoded batch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from vitquant.errors import ConfigError, DataError
from vitquant.evaluation.metrics import ClassificationMeter, FidelityMeter

__all__ = ["ModelRun", "PairEvaluation", "compare_throughput", "evaluate_pair", "log_pair", "measure_throughput", "run_pair", "timed_forward"]

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

    def merge(self, other: ModelRun) -> None:
        """Add ``other``'s images, run in parallel with this one: the forward time is the slower of the two."""
        self.meter.merge(other.meter)
        self.images += other.images
        self.forward_seconds = max(self.forward_seconds, other.forward_seconds)


@dataclass
class PairEvaluation:
    """What one pass over a loader gives: both models' runs, their fidelity, and the images the data layer
    skipped as undecodable (``on_bad_image="skip"``; seen by neither model)."""

    fp: ModelRun
    quantized: ModelRun | None
    fidelity: FidelityMeter | None
    skipped: list[str] = field(default_factory=list)
    #: the saved integer program on the same images (``quantize --save``): its run, and its fidelity to the
    #: simulated (quantized) model and to the FP model
    program: ModelRun | None = None
    program_vs_quantized: FidelityMeter | None = None
    program_vs_fp: FidelityMeter | None = None

    def merge(self, other: PairEvaluation) -> None:
        """Add another process's share of the images (exact: see :mod:`vitquant.evaluation.metrics`)."""
        self.fp.merge(other.fp)
        for name in ("quantized", "fidelity", "program", "program_vs_quantized", "program_vs_fp"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine.merge(theirs)
        self.skipped = sorted(self.skipped + other.skipped)


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


def timed_forward(model: nn.Module, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
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
    """Return ``(images, labels)`` from a ``(images, labels, ...)`` batch (e.g. a ``LoadedBatch``)."""
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
        logits, elapsed = timed_forward(self.model, images, self.device)
        self.seconds += elapsed
        self.meter.update(logits, labels)
        return logits

    def result(self) -> ModelRun:
        """Freeze the accumulated numbers into a :class:`ModelRun`."""
        return ModelRun(meter=self.meter, forward_seconds=self.seconds, images=self.meter.images)


def run_pair(
    fp_model: nn.Module,
    q_model: nn.Module | None,
    loader: Iterable,
    progress: bool = True,
    desc: str = "evaluating",
    program: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PairEvaluation:
    """Evaluate ``fp_model`` and (optionally) ``q_model`` in one pass over ``loader``; with ``program``
    (a saved integer program, ``images -> logits`` on the CPU) also the program, against both.

    Each batch is decoded once and fed to the fp model, then the quantized model. A batch's third field,
    when it is a ``LoadedBatch``, names images the data layer skipped; a batch left empty by skipping is
    not run. No image at all is not an error here (a process's share can be empty): see
    :func:`evaluate_pair`.
    """
    fp = _Runner(fp_model)
    q = _Runner(q_model) if q_model is not None else None
    fidelity = FidelityMeter() if q_model is not None else None
    p = _Runner(_ProgramModule(program)) if program is not None and q_model is not None else None
    vs_q, vs_fp = (FidelityMeter(), FidelityMeter()) if p is not None else (None, None)
    skipped: list[str] = []
    bar = tqdm(loader, desc=desc, unit="batch", file=sys.stderr, disable=not progress)
    for batch in bar:
        images, labels = _split_batch(batch)
        skipped.extend(getattr(batch, "skipped", ()))
        if labels.numel() == 0:
            continue
        fp_logits = fp.step(images, labels)
        if q is not None and fidelity is not None:
            q_logits = q.step(images, labels)
            fidelity.update(fp_logits, q_logits)
            if p is not None and vs_q is not None and vs_fp is not None:
                p_logits = p.step(images, labels)
                vs_q.update(q_logits, p_logits.to(q_logits.device))
                vs_fp.update(fp_logits, p_logits.to(fp_logits.device))
    return PairEvaluation(fp.result(), q.result() if q is not None else None, fidelity, skipped,
                          p.result() if p is not None else None, vs_q, vs_fp)


class _ProgramModule(nn.Module):
    """An integer program (``images -> logits``, CPU) as a module the evaluation runs like the others."""

    def __init__(self, program: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.program = program

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images.cpu())


def log_pair(result: PairEvaluation, desc: str = "evaluating") -> None:
    """Log the headline numbers of ``result``; :class:`DataError` if it holds no image."""
    if result.fp.images == 0:
        raise DataError("evaluation loader yielded no images")
    log.info("%s: fp top-1 %.2f%% on %d images", desc, result.fp.meter.top1, result.fp.images)
    if result.skipped:
        log.warning("%s: %d undecodable images skipped", desc, len(result.skipped))
    if result.quantized is not None and result.fidelity is not None:
        log.info(
            "%s: quantized top-1 %.2f%%, agreement %.2f%%, mean KL %.6f",
            desc, result.quantized.meter.top1, result.fidelity.top1_agreement, result.fidelity.mean_kl,
        )


def evaluate_pair(
    fp_model: nn.Module,
    q_model: nn.Module | None,
    loader: Iterable,
    progress: bool = True,
    desc: str = "evaluating",
) -> tuple[ModelRun, ModelRun | None, FidelityMeter | None]:
    """:func:`run_pair` as ``(fp_run, q_run, fidelity)``; the last two are ``None`` without ``q_model``.

    Raises :class:`DataError` if the loader yields no images.
    """
    result = run_pair(fp_model, q_model, loader, progress, desc)
    log_pair(result, desc)
    return result.fp, result.quantized, result.fidelity


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
            timed_forward(model, images, device)
    best = [float("inf")] * len(models)
    for _ in range(repeats):
        for i, (model, images, device) in enumerate(zip(models, inputs, devices)):
            best[i] = min(best[i], timed_forward(model, images, device)[1])
    return [batch.shape[0] / t if t > 0.0 else float("inf") for t in best]
