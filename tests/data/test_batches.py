"""Batches: order, the split over processes, and the bad-image policy (error | skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vitquant.data import ImageRecord, load_batch, load_images, make_loader, shard_batches
from vitquant.errors import ConfigError, DataError

TINY = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def _records(folder: Path, labels: list[int], bad: tuple[int, ...] = ()) -> list[ImageRecord]:
    """One PNG per label (red channel 40 * i), and junk bytes under a .JPEG name for the ``bad`` indices."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, label in enumerate(labels):
        if i in bad:
            path = folder / f"{i}.JPEG"
            path.write_bytes(os.urandom(200))
        else:
            path = folder / f"{i}.png"
            Image.new("RGB", (12, 10), (i * 40, 0, 0)).save(path)
        records.append(ImageRecord(path, label))
    return records


def test_load_batch(tmp_path):
    batch = load_batch(_records(tmp_path, [0, 1, 2]), TINY)
    assert batch.shape == (3, 3, 8, 8)
    assert torch.allclose(batch[:, 0, 0, 0], torch.tensor([0.0, 40, 80]) / 255)


def test_load_batch_empty():
    with pytest.raises(DataError, match="empty"):
        load_batch([], TINY)


def test_make_loader_keeps_order(tmp_path):
    loader = make_loader(_records(tmp_path, [4, 1, 3, 0, 2]), TINY, batch_size=2)
    batches = list(loader)
    assert [len(b.labels) for b in batches] == [2, 2, 1]
    assert torch.cat([b.labels for b in batches]).tolist() == [4, 1, 3, 0, 2]
    assert batches[0].images.shape == (2, 3, 8, 8)
    assert all(b.skipped == () for b in batches)


@pytest.mark.parametrize("batch_size, num_workers", [(0, 0), (2, -1), (1.5, 0)])
def test_make_loader_bad_options(tmp_path, batch_size, num_workers):
    with pytest.raises(ConfigError):
        make_loader(_records(tmp_path, [0]), TINY, batch_size=batch_size, num_workers=num_workers)


# ------------------------------------------------------------------------ split over processes
@pytest.mark.parametrize("count, batch_size, world_size", [(10, 3, 2), (7, 2, 3), (4, 4, 3), (1, 5, 2)])
def test_shards_are_the_single_process_batches_dealt_out(count, batch_size, world_size):
    single = shard_batches(count, batch_size)
    assert [i for b in single for i in b] == list(range(count))
    assert all(len(b) == batch_size for b in single[:-1])
    shards = [shard_batches(count, batch_size, rank, world_size) for rank in range(world_size)]
    for k, batch in enumerate(single):  # batch k, whole, on rank k % world_size
        assert shards[k % world_size][k // world_size] == batch
    assert sum(len(s) for s in shards) == len(single)


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard_is_refused(rank, world_size):
    with pytest.raises(ConfigError):
        shard_batches(4, 2, rank, world_size)


def test_loader_of_one_rank(tmp_path):
    records = _records(tmp_path, [0, 1, 2, 3, 4])
    labels = [b.labels.tolist() for b in make_loader(records, TINY, batch_size=2, rank=1, world_size=2)]
    assert labels == [[2, 3]]
    assert list(make_loader(records, TINY, batch_size=4, rank=2, world_size=3)) == []  # an empty share


# ------------------------------------------------------------------------------ bad images
def test_bad_image_is_an_error_by_default(tmp_path):
    records = _records(tmp_path, [0, 1, 2], bad=(1,))
    with pytest.raises(DataError, match=r"cannot decode image .*1\.JPEG"):
        list(make_loader(records, TINY, batch_size=2))
    with pytest.raises(DataError, match=r"cannot decode image .*1\.JPEG"):
        load_images(records, TINY)


def test_skip_drops_bad_images_and_names_them(tmp_path):
    records = _records(tmp_path, [0, 1, 2, 3, 4], bad=(1, 2, 4))
    batches = list(make_loader(records, TINY, batch_size=2, on_bad_image="skip"))
    assert [b.labels.tolist() for b in batches] == [[0], [3], []]
    assert [b.images.shape[0] for b in batches] == [1, 1, 0]
    assert [[Path(p).name for p in b.skipped] for b in batches] == [["1.JPEG"], ["2.JPEG"], ["4.JPEG"]]
    assert torch.allclose(batches[1].images[0, 0, 0, 0], torch.tensor(120 / 255))  # image 3, not image 2


def test_skip_in_decoding_workers(tmp_path):
    records = _records(tmp_path, [0, 1, 2], bad=(0,))
    batches = list(make_loader(records, TINY, batch_size=2, num_workers=1, on_bad_image="skip"))
    assert [b.labels.tolist() for b in batches] == [[1], [2]]
    assert batches[0].skipped == (str(records[0].path),)


def test_load_images_skip_and_all_bad(tmp_path):
    records = _records(tmp_path, [0, 1, 2], bad=(0, 2))
    batch = load_images(records, TINY, on_bad_image="skip")
    assert batch.labels.tolist() == [1] and batch.images.shape == (1, 3, 8, 8)
    assert batch.skipped == (str(records[0].path), str(records[2].path))
    with pytest.raises(DataError, match="none of the 2 images could be decoded"):
        load_images([records[0], records[2]], TINY, on_bad_image="skip")


def test_unknown_policy(tmp_path):
    with pytest.raises(ConfigError, match="unknown --on-bad-image 'ignore'"):
        make_loader(_records(tmp_path, [0]), TINY, batch_size=1, on_bad_image="ignore")
