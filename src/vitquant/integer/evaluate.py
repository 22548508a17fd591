"""``vitquant run``: evaluate a saved integer program on labelled images (no timm).

The images are the ones ``vitquant quantize`` evaluated when the folder is the one it calibrated on
(the same seeded split removes the same calibration images), otherwise the folder's images (a seeded
sample of ``eval_size``; ``on_bad_image="skip"`` leaves out, and names, the undecodable ones). Reports top-1/5 and images/s of the integer executor; with
``check_simulation`` it also runs the program's float64 twin on the same images and counts the images
whose logits are bit-identical. With ``compile`` (fast executor only) the first batch's run, which
compiles, is reported as ``compile_seconds``; the throughput times that batch again.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vitquant.data.batches import make_loader
from vitquant.data.datasets import list_images
from vitquant.data.preprocess import transform_from_config
from vitquant.data.splits import split_calibration_eval
from vitquant.errors import ConfigError, DataError
from vitquant.evaluation.metrics import ClassificationMeter
from vitquant.integer.execute import IntegerModel
from vitquant.integer.program import IntegerProgram
from vitquant.paths import default_sample_images

log = logging.getLogger(__name__)


@dataclass
class RunJob:
    model_file: Path
    eval_data: Path | None = None
    eval_size: int | None = None
    batch_size: int = 64
    workers: int = 0
    gemm: str = "float"  # "float": the fast executor (default; the same integers); "int": the strict executor (pure int64)
    compile: bool = False  # torch.compile the fast executor
    check_simulation: bool = False
    on_bad_image: str = "error"  # error | skip: what an undecodable image does
    progress: bool = True


def eval_records(eval_data: Path | None, eval_size: int | None, info: dict[str, Any]) -> tuple[list, Path]:
    """The evaluation images (module docstring) of a program whose ``info`` records its calibration
    (folder, size, seed), and their folder."""
    eval_dir = eval_data or default_sample_images()
    if eval_dir is None:
        raise DataError("no images: pass --eval-data DIR")
    pool = list_images(eval_dir, split="val")
    calib_dir = info.get("calib_dir")
    if calib_dir and Path(calib_dir).resolve() == Path(eval_dir).resolve():
        _, records = split_calibration_eval(list_images(calib_dir, split="train"), pool,
                                            int(info["calib_size"]), eval_size, int(info["seed"]))
        return records, Path(eval_dir)
    records = sorted(pool, key=lambda r: r.path)
    if eval_size is not None and eval_size < len(records):
        records = sorted(random.Random(int(info.get("seed", 0))).sample(records, eval_size), key=lambda r: r.path)
    return records, Path(eval_dir)


def run_program(job: RunJob) -> dict[str, Any]:
    """Evaluate ``job.model_file``; the report dict (see the module docstring)."""
    if job.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {job.batch_size}")
    program = IntegerProgram.load(job.model_file)
    model = IntegerModel(program, backend="int", gemm=job.gemm, strict=True, compile=job.compile)
    twin = IntegerModel(program, backend="float") if job.check_simulation else None
    if "transform" not in program.info:
        raise ConfigError(f"{job.model_file}: the program records no data config (transform); re-save it")
    records, eval_dir = eval_records(job.eval_data, job.eval_size, program.info)
    loader = make_loader(records, transform_from_config(program.info["transform"]), job.batch_size, job.workers,
                         job.on_bad_image)
    meter, seconds, identical, skipped = ClassificationMeter(), 0.0, 0, []
    for images, labels, bad in tqdm(loader, desc="integer model", unit="batch", disable=not job.progress):
        skipped.extend(bad)
        if labels.numel() == 0:
            continue
        t = time.perf_counter()
        ints = model.run(images)
        if job.compile and not meter.images:  # that run compiled: time the batch again
            t = time.perf_counter()
            model.run(images)
        seconds += time.perf_counter() - t
        meter.update(ints.to(torch.float64) * program.output_scale, labels)
        if twin is not None:
            identical += int((twin.run(images) == ints.to(torch.float64)).all(dim=-1).sum())
    if meter.images == 0:
        raise DataError(f"none of the {len(records)} evaluation images could be decoded")
    report: dict[str, Any] = {
        "model_file": str(job.model_file),
        "eval_dir": str(eval_dir.resolve()),
        "images": meter.images,
        "skipped_images": skipped,
        "integer": {**meter.to_dict(), "images_per_second": meter.images / seconds if seconds else None, "gemm": job.gemm,
                    "compile_seconds": model.compile_seconds},
        "program": {"ops": len(program.ops), "info": program.info},
    }
    if twin is not None:
        report["simulation"] = {"kind": "float64 twin of the program", "bit_identical_images": identical,
                                "images": meter.images}
    return report
