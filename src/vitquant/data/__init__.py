"""Images in: folder layouts, the model's eval transform, and the calibration/evaluation split."""

from vitquant.data.batches import (
    BAD_IMAGE_POLICIES,
    LoadedBatch,
    check_bad_image_policy,
    load_batch,
    load_images,
    make_batch_loader,
    make_loader,
    shard_batches,
)
from vitquant.data.datasets import IMAGE_EXTENSIONS, ImageDataset, ImageRecord, list_images
from vitquant.data.splits import split_calibration_eval

__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageRecord",
    "LoadedBatch",
    "check_bad_image_policy",
    "data_config",
    "eval_transform",
    "list_images",
    "load_batch",
    "load_images",
    "make_batch_loader",
    "make_loader",
    "shard_batches",
    "split_calibration_eval",
]


def __getattr__(name: str):
    """``data_config`` and ``eval_transform`` need timm: imported on first use only (the integer
    executor's evaluation path reads images without timm, :mod:`vitquant.data.preprocess`)."""
    if name in ("data_config", "eval_transform"):
        from vitquant.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'vitquant.data' has no attribute {name!r}")
