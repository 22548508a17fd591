"""Quantization-aware training of a calibrated model: the loop, its checkpoints, and the hardened result.

    calibrated model -> [IRM before q, k] -> trainable swap -> AdamW steps -> harden, fold IRM -> calibrated model

What trains (starting from the calibrated values, straight-through estimator everywhere):

- every weight with a uniform quantizer: the latent float weight and its per-channel step (LSQ,
  :class:`~vitquant.quantizers.trainable.LSQWeight`), the zero point fixed;
- every uniform activation point: its step (LSQ); BitLog2, log√2, AdaLog, twin-uniform and the residual
  points stay as calibrated, gradient passed straight through (their kinds declare ``trainable`` False);
- the IRM's γ and β (:mod:`vitquant.qat.irm`), and every other float parameter (biases, LayerNorm
  affine, class and position tokens).

The swap is block reconstruction's :class:`~vitquant.reconstruction.block.TrainableBlock` applied to
the whole model. Integer non-linear kernels (``--nonlinear``) stay in the forward pass while training
(``kernels="ste"``, the default: the model trains as it is evaluated, the Mixed Non-linear paper's QAT
of the integer-only model), their output carrying the gradient of the exact float op on the same input
(the softmax's on the fake-quantized q·kᵀ logits, so it reaches q and k;
:func:`~vitquant.nn.nonlinear.straight_through`); or they run as their float ops and are active again
afterwards (``kernels="float"``, as in reconstruction). The integer residual adds' points pass the
gradient straight through like every other frozen point. The student runs in evaluation mode (dropout and drop-path off, as calibrated)
but for the IRM, which uses batch statistics. The teacher is the full-precision model, prepared with
every point off (its logits equal timm's).

Loss per step: ``kd_weight`` · KD + ``dgd_weight`` · DGD + ``label_weight`` · CE (:mod:`vitquant.qat.distill`),
the mean over the step's images. AdamW in three groups: latent weights (``lr``, ``weight_decay``), other
float parameters (``lr``, no decay), quantizer steps and IRM (``quant_lr``, no decay); the rate of step s
is the base rate times the warm-up/cosine factor (:mod:`vitquant.qat.schedule`).

Under ``torchrun`` the student is wrapped in ``DistributedDataParallel`` (gradients averaged over the
processes, the IRM's batch statistics summed over them), each process takes its share of every step's
images (:mod:`vitquant.qat.sampling`), and all end with the same model. Checkpoints are written by rank 0.

Determinism: on the CPU a run is a function of its inputs and seed, and a run stopped after k steps and
resumed from its checkpoint gives the same parameters, bit for bit, as one run straight through.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vitquant.calibration.pipeline import CalibrationResult, check_images, prepare, recount
from vitquant.data import ImageRecord, LoadedBatch, make_batch_loader
from vitquant.errors import CheckpointError, DataError, NumericalError
from vitquant.evaluation.distributed import Shard, model_fingerprint, on_main
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import Mode, set_mode
from vitquant.qat.checkpoint import check_same_run, load_checkpoint, save_checkpoint
from vitquant.qat.config import TrainConfig
from vitquant.qat.distill import QKTap, dgd_loss, kd_loss
from vitquant.qat.irm import fold_rectifiers, install_rectifiers
from vitquant.qat.sampling import LazyBatches, StepSampler
from vitquant.qat.schedule import CosineWarmup
from vitquant.quantizers.trainable import LSQWeight
from vitquant.reconstruction.block import CHUNK, TrainableBlock

log = logging.getLogger(__name__)


class TrainingImages(Protocol):
    """The labelled training images, by index: ``len()`` and the batches of lists of indices."""

    def __len__(self) -> int: ...

    def batches(self, plan: LazyBatches) -> Iterator[tuple[LoadedBatch, torch.Tensor]]:
        """Per list of indices of ``plan``, in order: its :class:`LoadedBatch` and which of its
        positions it holds (bool; False where an undecodable image was skipped)."""


class TensorImages:
    """Training images already decoded: ``images [n, 3, H, W]`` and ``labels [n]`` (library use, tests)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        check_images(images, "training images")
        if labels.shape != (images.shape[0],):
            raise DataError(f"training labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, plan: LazyBatches) -> Iterator[tuple[LoadedBatch, torch.Tensor]]:
        for indices in plan:
            yield LoadedBatch(self.images[indices], self.labels[indices], ()), torch.ones(len(indices), dtype=torch.bool)


class FolderImages:
    """Training images as files, decoded with ``transform`` as the steps need them (``workers``
    processes decoding ahead; undecodable ones as ``on_bad_image`` says)."""

    def __init__(self, records: list[ImageRecord], transform: Any, on_bad_image: str = "error", workers: int = 0) -> None:
        if not records:
            raise DataError("no training images")
        self.records, self.transform, self.on_bad_image, self.workers = records, transform, on_bad_image, workers

    def __len__(self) -> int:
        return len(self.records)

    def batches(self, plan: LazyBatches) -> Iterator[tuple[LoadedBatch, torch.Tensor]]:
        loader = make_batch_loader(self.records, self.transform, plan, self.workers, self.on_bad_image)
        for indices, batch in zip(plan, loader):
            skipped = set(batch.skipped)
            yield batch, torch.tensor([str(self.records[i].path) not in skipped for i in indices], dtype=torch.bool)


@dataclass
class TrainingResult:
    """The trained model (hardened, IRM folded: an ordinary calibrated model), its calibration result
    brought up to date (levels counted again), and what training did."""

    model: nn.Module
    calibration: CalibrationResult
    config: TrainConfig
    images: int
    processes: int
    steps: int
    steps_per_epoch: int
    warmup_steps: int
    resumed_from: int | None
    seconds: float  # the training steps of this process (not calibration, not hardening)
    trained: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        seen = sum(h["images"] for h in self.history)
        losses = [h["loss"] for h in self.history]
        return {
            "settings": self.config.to_dict(),
            "images": self.images,
            "processes": self.processes,
            "batch_per_process": self.config.batch_size,
            "steps": self.steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.steps / self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
            "resumed_from": self.resumed_from,
            "seconds": self.seconds,
            "trained": dict(self.trained),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "running_top1": 100.0 * sum(h["correct"] for h in self.history) / seen if seen else None,
            "history": [dict(h) for h in self.history],
        }


class QATTrainer:
    """One training run: :meth:`run` trains (and checkpoints), :meth:`finish` hardens the result.

    ``float_model`` is the full-precision model ``calibrated`` was made from (the teacher);
    ``calib_images`` start the IRM's statistics and count the levels at the end.
    """

    def __init__(
        self,
        float_model: nn.Module,
        calibrated: CalibrationResult,
        data: TrainingImages,
        config: TrainConfig,
        calib_images: torch.Tensor,
        shard: Shard | None = None,
        device: torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.calibrated, self.data, self.config, self.progress = calibrated, data, config, progress
        self.shard = shard or Shard()
        self.device = device or calib_images.device
        self.calib_batches = list(calib_images.split(CHUNK))
        self.total = config.total_steps(len(data), self.shard.world_size)
        self.schedule = CosineWarmup(self.total, config.warmup_steps(self.total))
        self.sampler = StepSampler(len(data), config.batch_size, config.seed, self.shard.rank, self.shard.world_size)

        self.student = copy.deepcopy(calibrated.model).eval()
        self.student.requires_grad_(False)
        self.rectifiers = install_rectifiers(self.student, self.calib_batches) if config.irm else []
        self.swap = TrainableBlock(self.student, weight_source=LSQWeight, kernels=config.kernels)
        self.swap.install()
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=config.lr, weight_decay=0.0)
        self.teacher = prepare(copy.deepcopy(float_model).eval(), calibrated.qconfig)
        self.teacher.requires_grad_(False)
        set_mode(self.teacher, Mode.FLOAT)
        self.taps = (QKTap(self.student), QKTap(self.teacher)) if config.dgd_weight > 0 else None

        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        self.run_identity = self._identity()
        self.resumed_from: int | None = None
        if config.resume:
            self._resume()

    # ------------------------------------------------------------------------------ set-up
    def _parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW's groups (see the module docstring); every other parameter stays frozen."""
        latent = [r.weight for r in self.swap.roundings]
        quant = [r.scale for r in self.swap.roundings] + self.swap.step_parameters()
        quant += [p for r in self.rectifiers for p in r.parameters()]
        unused = {id(m.weight) for m in self.student.modules() if isinstance(m, WeightQuantMixin) and m.mode is Mode.QUANTIZE}
        taken = {id(p) for p in latent + quant} | unused
        other = [p for p in self.student.parameters() if id(p) not in taken]
        self.trained = {
            "lsq_weights": len(latent), "lsq_steps": len(self.swap.step_parameters()),
            "frozen_points": len(self.swap.activations) - len(self.swap.step_parameters()),
            "rectifiers": len(self.rectifiers), "float_parameters": len(other),
        }
        cfg = self.config
        groups = [
            {"name": "weights", "params": latent, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"name": "float", "params": other, "lr": cfg.lr, "weight_decay": 0.0},
            {"name": "quantizers", "params": quant, "lr": cfg.quant_lr, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        for group in groups:
            group["base_lr"] = group["lr"]
            for p in group["params"]:
                p.requires_grad_(True)
        return groups

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed here (:func:`check_same_run`)."""
        return {
            **self.config.resume_key(),
            "calibrated_model": model_fingerprint(self.calibrated.model, self.calibrated.qconfig.to_dict()),
            "processes": self.shard.world_size,
            "training_images": len(self.data),
        }

    def _resume(self) -> None:
        path = self.config.checkpoint
        assert path is not None  # TrainConfig: resume needs a checkpoint
        state = load_checkpoint(path)
        check_same_run(path, state["run"], self.run_identity)
        try:
            self.student.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.history = int(state["step"]), list(state["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.resumed_from = self.step
        log.info("resumed from %s at step %d of %d", path, self.step, self.total)

    def _checkpoint(self) -> None:
        path = self.config.checkpoint
        assert path is not None
        payload = {
            "step": self.step,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "run": self.run_identity,
        }
        on_main(self.shard, lambda: save_checkpoint(path, payload))

    # ------------------------------------------------------------------------------ training
    def run(self, until: int | None = None) -> None:
        """Train steps ``self.step`` .. ``until - 1`` (default: to the end), checkpointing every
        ``checkpoint_every`` steps and at the last one."""
        end = self.total if until is None else min(until, self.total)
        if self.step >= end:
            return
        model: nn.Module = self.student
        if self.shard.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids, broadcast_buffers=False)
        for r in self.rectifiers:
            r.train()
        every = self.config.checkpoint_every
        bar = tqdm(total=self.total, initial=self.step, desc="training", unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        try:
            with torch.enable_grad():
                for batch, kept in self.data.batches(LazyBatches(self.sampler, self.step, end)):
                    self._train_step(model, batch, kept)
                    if self.config.checkpoint is not None and (self.step == end or (every and self.step % every == 0)):
                        self._checkpoint()
                    bar.update(1)
                    if self.progress:
                        h = self.history[-1]
                        bar.set_postfix(loss=f"{h['loss']:.4g}", kd=f"{h['kd']:.3g}", dgd=f"{h['dgd']:.3g}",
                                        top1=f"{self._running_top1():.1f}%")
        finally:
            bar.close()
            for r in self.rectifiers:
                r.eval()
            self.seconds += time.perf_counter() - start

    def _running_top1(self) -> float:
        seen = sum(h["images"] for h in self.history)
        return 100.0 * sum(h["correct"] for h in self.history) / max(seen, 1)

    def _train_step(self, model: nn.Module, batch: LoadedBatch, kept: torch.Tensor) -> None:
        step, cfg = self.step, self.config
        images, labels = self._step_images(batch, kept)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = model(images)
        kd = kd_loss(logits, teacher_logits, cfg.temperature)
        dgd = dgd_loss(self.taps[0].take(), self.taps[1].take()) if self.taps else torch.zeros((), device=logits.device)
        ce = F.cross_entropy(logits, labels)
        loss = cfg.kd_weight * kd + cfg.dgd_weight * dgd + cfg.label_weight * ce
        self.schedule.apply(self.optimizer, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = images.shape[0]
        correct = (logits.detach().argmax(-1) == labels).sum()
        sums = torch.stack([loss.detach() * n, kd.detach() * n, dgd.detach() * n, ce.detach() * n,
                            correct.to(loss.dtype), torch.tensor(float(n), device=loss.device)]).double()
        if self.shard.sharded:
            dist.all_reduce(sums)
        seen = float(sums[5])
        if not math.isfinite(float(sums[0])):  # after the exchange: every process stops here together
            raise NumericalError(f"training step {step}: the loss is {float(sums[0]) / seen} (lower --lr or --quant-lr)")
        self.history.append({
            "step": step, "lr": self.schedule.factor(step) * cfg.lr, "loss": float(sums[0]) / seen,
            "kd": float(sums[1]) / seen, "dgd": float(sums[2]) / seen, "ce": float(sums[3]) / seen,
            "correct": int(sums[4]), "images": int(seen),
        })
        self.step += 1

    def _step_images(self, batch: LoadedBatch, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device, flipped where drawn; every process must have an image."""
        count = torch.tensor([batch.labels.numel()], device=self.device)
        if self.shard.sharded:  # all stop together rather than wait on a process with nothing to train on
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
        if int(count) == 0:
            raise DataError(f"training step {self.step}: no image of a process's batch could be decoded")
        images, labels = batch.images.to(self.device), batch.labels.to(self.device)
        if self.config.flip:
            flips = self.sampler.flips(self.step)[kept]  # drawn per position: those of the decoded images
            images = torch.where(flips.to(self.device)[:, None, None, None], images.flip(-1), images)
        return images, labels

    # ------------------------------------------------------------------------------ result
    def finish(self) -> TrainingResult:
        """Harden the trained quantizers, fold the IRM, count the levels on the calibration images."""
        if self.taps:
            for tap in self.taps:
                tap.close()
        self.swap.harden()
        fold_rectifiers(self.student)
        self.student.eval()
        self.student.requires_grad_(False)
        refreshed = recount(self.calibrated, self.student, self.calib_batches, "calibration images after training")
        return TrainingResult(
            model=self.student, calibration=refreshed, config=self.config, images=len(self.data),
            processes=self.shard.world_size, steps=self.total, steps_per_epoch=self.sampler.steps_per_epoch,
            warmup_steps=self.schedule.warmup, resumed_from=self.resumed_from, seconds=self.seconds,
            trained=self.trained, history=self.history,
        )
