"""Decoded batches: the bad-image policy, the evaluation loader and its split over processes.

With ``on_bad_image="skip"`` an image that cannot be decoded is dropped from its batch here, in the data
layer, and named in the batch's ``skipped``: everything downstream (the FP and the quantized model alike)
sees the same images. Batches are runs of ``batch_size`` consecutive records in the given (sorted) order;
process ``rank`` of ``world_size`` gets batches ``rank, rank + world_size, ...`` (:func:`shard_batches`), so
every batch holds the same images whether one process evaluates or many.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from vitquant.data.datasets import ImageDataset, ImageRecord, Transform
from vitquant.errors import ConfigError, DataError

__all__ = [
    "BAD_IMAGE_POLICIES",
    "LoadedBatch",
    "check_bad_image_policy",
    "load_batch",
    "load_images",
    "make_batch_loader",
    "make_loader",
    "shard_batches",
]

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


class LoadedBatch(NamedTuple):
    """``images`` ``[n, C, H, W]`` (``n`` may be 0 when every image was skipped), ``labels`` ``[n]`` and the
    paths of the images of this batch that could not be decoded and were dropped."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[str, ...]


def check_bad_image_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`BAD_IMAGE_POLICIES`, else :class:`ConfigError`."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"unknown --on-bad-image {policy!r}; choose one of {', '.join(BAD_IMAGE_POLICIES)}")
    return policy


class _PolicyDataset(Dataset):
    """Item ``i``: ``(image or None, label, path)``; ``None`` for an undecodable image under ``skip``."""

    def __init__(self, records: Sequence[ImageRecord], transform: Transform, on_bad_image: str) -> None:
        self.images = ImageDataset(records, transform)
        self.skip = check_bad_image_policy(on_bad_image) == "skip"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        record = self.images.records[index]
        try:
            image, label = self.images[index]
        except DataError as exc:
            if not self.skip:
                raise
            logger.warning("skipping %s", exc)
            return None, record.label, str(record.path)
        return image, label, str(record.path)


def _collate(items: list[tuple[Any, int, str]]) -> LoadedBatch:
    """Stack the decoded images of a batch; name the skipped ones."""
    kept = [(image, label) for image, label, _ in items if image is not None]
    skipped = tuple(path for image, _, path in items if image is None)
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    if not kept:
        return LoadedBatch(torch.empty(0), labels, skipped)
    try:
        images = torch.stack([image for image, _ in kept])
    except (TypeError, RuntimeError) as exc:
        raise DataError(f"transformed images cannot be stacked into one batch: {exc}") from exc
    return LoadedBatch(images, labels, skipped)


def _require_records(records: Sequence[ImageRecord]) -> None:
    if len(records) == 0:
        raise DataError("no images to load: the record list is empty")


def load_images(records: Sequence[ImageRecord], transform: Transform, on_bad_image: str = "error") -> LoadedBatch:
    """Decode and transform every record into one batch; under ``skip`` the undecodable ones are dropped and
    named (:class:`DataError` if none is left)."""
    _require_records(records)
    dataset = _PolicyDataset(records, transform, on_bad_image)
    batch = _collate([dataset[i] for i in range(len(dataset))])
    if batch.labels.numel() == 0:
        raise DataError(f"none of the {len(records)} images could be decoded (first: {batch.skipped[0]})")
    return batch


def load_batch(records: Sequence[ImageRecord], transform: Transform) -> torch.Tensor:
    """Decode and transform every record and stack them into one ``(N, C, H, W)`` tensor."""
    return load_images(records, transform).images


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ConfigError(f"{name} must be {kind} integer, got {value!r}")
    return value


def shard_batches(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Index batches of process ``rank``: batch ``k`` holds indices ``[k * batch_size, (k + 1) * batch_size)``
    of ``count`` and goes to rank ``k % world_size``."""
    _check_count(batch_size, "batch_size", 1)
    _check_count(world_size, "world_size", 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    starts = range(rank * batch_size, count, world_size * batch_size)
    return [list(range(start, min(start + batch_size, count))) for start in starts]


def make_loader(
    records: Sequence[ImageRecord],
    transform: Transform,
    batch_size: int,
    num_workers: int = 0,
    on_bad_image: str = "error",
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A :class:`DataLoader` of :class:`LoadedBatch` es in record order: this process's share
    (:func:`shard_batches`) of the batches of ``records``."""
    _require_records(records)
    _check_count(batch_size, "batch_size", 1)
    return make_batch_loader(records, transform, shard_batches(len(records), batch_size, rank, world_size),
                             num_workers, on_bad_image)


def make_batch_loader(
    records: Sequence[ImageRecord],
    transform: Transform,
    batches: Iterable[list[int]],
    num_workers: int = 0,
    on_bad_image: str = "error",
) -> DataLoader:
    """A :class:`DataLoader` of one :class:`LoadedBatch` per list of record indices in ``batches`` (any
    iterable, read as the loader goes: a training run's seeded order, :mod:`vitquant.qat.sampling`)."""
    _require_records(records)
    _check_count(num_workers, "num_workers", 0)
    return DataLoader(
        _PolicyDataset(records, transform, on_bad_image),
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=_collate,
    )
