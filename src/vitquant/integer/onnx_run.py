"""Run an exported ONNX model in onnxruntime: ``vitquant run MODEL.onnx`` (needs neither timm nor torch.compile).

:class:`OnnxModel` wraps an ``onnxruntime.InferenceSession`` with the model's recorded metadata (eval
transform, output scale). :func:`run_onnx` evaluates it on labelled images, the same ones ``vitquant
run MODEL.vqm`` takes (the held-out split of the calibration folder, or a seeded sample of another), and
with ``check`` also runs the strict int64 executor of the ``.vqm`` on the same images and counts the
images whose integer logits are equal on every class (``bit_identical_images``). Top-1/5 come from
``logits_int`` × the output scale in float64 (integer graphs, as ``vitquant run MODEL.vqm``), or from
``logits`` (QDQ graphs). The throughput times onnxruntime's runs only, not the image decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vitquant.errors import ConfigError, DataError, ModelFileError
from vitquant.integer.onnx_export import ONNX_EXTRA


class OnnxModel:
    """An exported model in onnxruntime (CPU): ``run(images) -> {output name: array}``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError(ONNX_EXTRA) from exc
        from vitquant.integer.onnx_export import read_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: ONNX model not found")
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
            raise ModelFileError(f"{self.path}: not a readable ONNX model ({type(exc).__name__})") from exc
        self.metadata = read_metadata(model)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are plain exceptions
            raise ModelFileError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from exc
        self.outputs = [o.name for o in self.session.get_outputs()]

    @property
    def transform(self) -> dict[str, Any] | None:
        return self.metadata.get("vitquant.transform")

    @property
    def integer(self) -> bool:
        """Whether the graph gives integer logits (``logits_int``)."""
        return "logits_int" in self.outputs

    def run(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        x = images.numpy() if isinstance(images, torch.Tensor) else images
        return dict(zip(self.outputs, self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})))

    def logits(self, out: dict[str, np.ndarray]) -> torch.Tensor:
        """Float64 logits: ``logits_int`` × the output scale (integer graphs), else ``logits``."""
        if self.integer:
            return torch.from_numpy(out["logits_int"]).to(torch.float64) * float(self.metadata["vitquant.output_scale"])
        return torch.from_numpy(out["logits"]).to(torch.float64)


@dataclass
class OnnxRunJob:
    model_file: Path
    eval_data: Path | None = None
    eval_size: int | None = None
    batch_size: int = 64
    workers: int = 0
    check: Path | None = None  # a .vqm: count the images whose integer logits equal its strict executor's
    threads: int | None = None  # onnxruntime's intra-op threads (default: its own)
    on_bad_image: str = "error"
    progress: bool = True


def run_onnx(job: OnnxRunJob) -> dict[str, Any]:
    """Evaluate ``job.model_file`` in onnxruntime; the report (module docstring)."""
    from vitquant.data.batches import make_loader
    from vitquant.data.preprocess import transform_from_config
    from vitquant.evaluation.metrics import ClassificationMeter
    from vitquant.integer.evaluate import eval_records

    if job.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {job.batch_size}")
    model = OnnxModel(job.model_file, job.threads)
    if model.transform is None:
        raise ConfigError(f"{job.model_file}: the model records no eval transform (export it from a saved .vqm)")
    strict = None
    if job.check is not None:
        from vitquant.integer.execute import load

        if not model.integer:
            raise ConfigError(f"--check compares integer logits; {job.model_file} has no logits_int output (a QDQ graph?)")
        strict = load(job.check)
    info = model.metadata.get("vitquant.program_info") or {}
    records, eval_dir = eval_records(job.eval_data, job.eval_size, info)
    loader = make_loader(records, transform_from_config(model.transform), job.batch_size, job.workers, job.on_bad_image)
    meter, seconds, identical, skipped = ClassificationMeter(), 0.0, 0, []
    for images, labels, bad in tqdm(loader, desc="onnxruntime", unit="batch", disable=not job.progress):
        skipped.extend(bad)
        if labels.numel() == 0:
            continue
        start = time.perf_counter()
        out = model.run(images)
        seconds += time.perf_counter() - start
        meter.update(model.logits(out), labels)
        if strict is not None:
            identical += int((torch.from_numpy(out["logits_int"]) == strict.run(images)).all(dim=-1).sum())
    if meter.images == 0:
        raise DataError(f"none of the {len(records)} evaluation images could be decoded")
    metrics = meter.to_dict()
    return {
        "model_file": str(job.model_file),
        "format": model.metadata.get("vitquant.format"),
        "eval_dir": str(Path(eval_dir).resolve()),
        "images": meter.images,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "images_per_second": meter.images / seconds if seconds else None,
        "bit_identical_images": identical if strict is not None else None,
        "checked_against": None if job.check is None else str(job.check),
        "threads": job.threads,
        "skipped_images": skipped,
    }
