"""``vitquant train`` as a library function: the main job with quantization-aware training before the
evaluation.

    calibrate (as ``quantize``) -> [reconstruct] -> train on the training images -> evaluate -> report

**Which images train.** ``train_data`` (an ImageNet root, whose ``train/`` is used, a folder of class
sub-folders, or a flat folder with ``labels.csv``; default: the calibration folder) without any image
of the evaluation set. So the evaluated images are never trained on, whatever the folders: with the
shared flat sample and ``--eval-size 300`` the other 700 images train (the calibration images among
them); with an ImageNet root, all of ``train/`` trains and ``val/`` is evaluated. The images are decoded
with the model's eval transform, flipped at random (seeded) when ``flip`` is on.

The report is ``quantize``'s, measured on the trained model, with a ``training`` section: the training
folder and how many of its images were held out for evaluation, the settings, steps, epochs, seconds,
what trained, the first and last loss, the running top-1 on the training batches and every step's
losses (:meth:`~vitquant.qat.trainer.TrainingResult.to_dict`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitquant.calibration import CalibrationResult
from vitquant.data import ImageRecord, list_images
from vitquant.errors import DataError
from vitquant.evaluation.distributed import current_shard
from vitquant.qat.config import TrainConfig
from vitquant.qat.trainer import FolderImages, QATTrainer
from vitquant.workflow import JobData, QuantizeJob, StageInputs, check_record_labels, run_quantize

log = logging.getLogger(__name__)


@dataclass
class TrainJob(QuantizeJob):
    """The main job's options and the training's: its images (None: the calibration folder) and settings."""

    train_data: Path | None = None
    training: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TrainingStage:
    """Quantization-aware training as the stage after calibration (:class:`vitquant.workflow.Stage`)."""

    job: TrainJob
    name: str = "training"
    folder: Path | None = None
    records: list[ImageRecord] = field(default_factory=list)
    held_out: int = 0  # images of the training folder that are evaluated, so not trained on

    def check(self, data: JobData) -> None:
        """List the training images (the evaluation images removed) and check they fill the steps."""
        self.folder = Path(self.job.train_data or data.calib_dir)
        pool = list_images(self.folder, split="train")
        evaluated = {r.path.resolve() for r in data.evaluation}
        self.records = [r for r in pool if r.path.resolve() not in evaluated]
        self.held_out = len(pool) - len(self.records)
        if not self.records:
            raise DataError(
                f"no training images: all {len(pool)} images of {self.folder} are evaluation images; pass "
                "--train-data DIR, or a smaller --eval-size to leave images of the folder for training"
            )
        self.job.training.total_steps(len(self.records), current_shard().world_size)

    def run(self, inputs: StageInputs) -> tuple[CalibrationResult, dict[str, Any]]:
        assert self.folder is not None  # check() ran first
        check_record_labels(self.records, self.folder, inputs.float_model)
        images = FolderImages(self.records, inputs.transform, self.job.on_bad_image, self.job.workers)
        trainer = QATTrainer(inputs.float_model, inputs.result, images, self.job.training, inputs.calib_images,
                             inputs.shard, inputs.device, inputs.progress)
        log.info("training on %d images from %s (%d evaluation images held out): %d steps of %d x %d images ...",
                 len(self.records), self.folder, self.held_out, trainer.total, self.job.training.batch_size,
                 inputs.shard.world_size)
        trainer.run()
        result = trainer.finish()
        log.info("trained %d steps in %.1f s; loss %.4g -> %.4g", result.steps, result.seconds,
                 result.history[0]["loss"] if result.history else float("nan"),
                 result.history[-1]["loss"] if result.history else float("nan"))
        section = {"folder": str(self.folder.resolve()), "held_out_images": self.held_out, **result.to_dict()}
        return result.calibration, section


def run_train(job: TrainJob) -> dict[str, Any]:
    """Run ``vitquant train``: the main job (:func:`~vitquant.workflow.run_quantize`) with training."""
    return run_quantize(job, TrainingStage(job))
