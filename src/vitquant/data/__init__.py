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
from vitquant.data.transforms import data_config, eval_transform

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
