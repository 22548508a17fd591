"""Images in: folder layouts, the model's eval transform, and the calibration/evaluation split."""

from vitquant.data.datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageRecord,
    list_images,
    load_batch,
    make_loader,
)
from vitquant.data.splits import split_calibration_eval

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageRecord",
    "data_config",
    "eval_transform",
    "list_images",
    "load_batch",
    "make_loader",
    "split_calibration_eval",
]


def __getattr__(name: str):
    """``data_config`` and ``eval_transform`` need timm: imported on first use only (the integer
    executor's evaluation path reads images without timm, :mod:`vitquant.data.preprocess`)."""
    if name in ("data_config", "eval_transform"):
        from vitquant.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'vitquant.data' has no attribute {name!r}")
