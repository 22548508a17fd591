"""Folder layouts -> records, decoding, batching; plus the real 1,000-image sample when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vitquant.data import ImageDataset, ImageRecord, list_images
from vitquant.errors import DataError
from vitquant.paths import default_sample_images

TINY = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def write_image(path: Path, color=(255, 0, 0), size=(12, 10), mode="RGB") -> Path:
    """Write a small solid-colour image; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format=fmt[path.suffix.lower()])
    return path


def write_flat(root: Path, rows: list[tuple[str, str]], header: str = "file,label", create=True) -> Path:
    """A flat folder with ``labels.csv``; every listed file is created unless ``create`` is False."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{name},{label}" for name, label in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    if create:
        for name, _ in rows:
            write_image(root / name)
    return root


# ------------------------------------------------------------------ layout (a): labels.csv
def test_flat_labels_csv(tmp_path):
    root = write_flat(tmp_path, [("c.JPEG", "7"), ("a.png", "0"), ("b.jpg", "999")])
    write_image(tmp_path / "unlisted.png")  # not in labels.csv: ignored
    records = list_images(tmp_path)
    assert records == [
        ImageRecord(root / "a.png", 0),
        ImageRecord(root / "b.jpg", 999),
        ImageRecord(root / "c.JPEG", 7),
    ]


def test_flat_bad_header(tmp_path):
    write_flat(tmp_path, [("a.png", "0")], header="filename,class")
    with pytest.raises(DataError, match="header"):
        list_images(tmp_path)


def test_flat_missing_file(tmp_path):
    write_flat(tmp_path, [("a.png", "0"), ("gone.JPEG", "1")], create=False)
    write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"labels\.csv:3: image file 'gone\.JPEG' does not exist"):
        list_images(tmp_path)


@pytest.mark.parametrize("label", ["1000", "-1", "cat", "2.5"])
def test_flat_bad_label(tmp_path, label):
    write_flat(tmp_path, [("a.png", "0"), ("b.png", label)])
    with pytest.raises(DataError, match=r"labels\.csv:3: label"):
        list_images(tmp_path)


def test_flat_duplicate_file(tmp_path):
    write_flat(tmp_path, [("a.png", "0"), ("a.png", "1")])
    with pytest.raises(DataError, match="listed twice"):
        list_images(tmp_path)


def test_flat_header_only(tmp_path):
    write_flat(tmp_path, [])
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)


# --------------------------------------------------------- layout (b): ImageNet val/ train/
def make_imagenet(root: Path, splits=("val",)) -> Path:
    for split in splits:
        write_image(root / split / "n01443537" / "x.JPEG")
        write_image(root / split / "n01440764" / "y.JPEG")
        write_image(root / split / "n01440764" / "z.jpeg")
        (root / split / "n01440764" / "README.txt").write_text("not an image")
    return root


def test_imagenet_val_with_synsets(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "synsets.txt").write_text("n00000000\nn01443537\nn01440764\n")  # deliberately not sorted
    records = list_images(root)
    assert [(r.path.relative_to(root).as_posix(), r.label) for r in records] == [
        ("val/n01440764/y.JPEG", 2),
        ("val/n01440764/z.jpeg", 2),
        ("val/n01443537/x.JPEG", 1),
    ]


def test_imagenet_synsets_in_split_folder(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "val" / "synsets.txt").write_text("n01443537\nn01440764\n")
    assert [r.label for r in list_images(root)] == [1, 1, 0]


def test_imagenet_sorted_order_without_synsets(tmp_path):
    root = make_imagenet(tmp_path, splits=("train", "val"))
    write_image(root / "train" / "n01484850" / "w.png")
    records = list_images(root, split="train")
    assert all(r.path.parent.parent.name == "train" for r in records)
    expected = [("n01440764", 0), ("n01440764", 0), ("n01443537", 1), ("n01484850", 2)]
    assert [(r.path.parent.name, r.label) for r in records] == expected


def test_imagenet_train_falls_back_to_val(tmp_path):
    root = make_imagenet(tmp_path)
    assert list_images(root, split="train") == list_images(root, split="val")


def test_imagenet_missing_split(tmp_path):
    root = make_imagenet(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="no 'val' split"):
        list_images(root, split="val")


def test_imagenet_unknown_synset(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "synsets.txt").write_text("n01440764\n")
    with pytest.raises(DataError, match="n01443537"):
        list_images(root)


def test_flat_val_folder_is_not_a_class(tmp_path):
    write_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="class sub-folders"):
        list_images(tmp_path)


# ------------------------------------------------------------- layout (c): class folders
def test_class_folders(tmp_path):
    write_image(tmp_path / "n01443537" / "a.PNG")
    write_image(tmp_path / "n01440764" / "b.bmp")
    write_image(tmp_path / "n01440764" / "c.webp")
    write_image(tmp_path / "n01484850" / "deeper" / "ignored.png")  # only direct children are images
    (tmp_path / "n01440764" / "notes.txt").write_text("x")
    records = list_images(tmp_path)
    assert [(r.path.name, r.label) for r in records] == [("b.bmp", 0), ("c.webp", 0), ("a.PNG", 1)]


def test_partial_imagenet_classes_keep_standard_indices(tmp_path):
    for wnid in ["n01530575", "n01531178", "n02085620"]:  # brambling 10, goldfinch 11, Chihuahua 151
        write_image(tmp_path / wnid / "x.png")
    assert [r.label for r in list_images(tmp_path)] == [10, 11, 151]


def test_class_folders_without_wnids_or_synsets(tmp_path):
    write_image(tmp_path / "cat" / "x.png")
    write_image(tmp_path / "dog" / "y.png")
    with pytest.raises(DataError, match="synsets.txt"):
        list_images(tmp_path)


def test_class_folders_with_synsets(tmp_path):
    write_image(tmp_path / "b" / "x.jpg")
    write_image(tmp_path / "a" / "y.jpg")
    (tmp_path / "synsets.txt").write_text("b first\na second\n")
    assert [(r.path.parent.name, r.label) for r in list_images(tmp_path)] == [("a", 1), ("b", 0)]


def test_records_sorted_by_path(tmp_path):
    for name in ["b", "a", "c"]:
        write_image(tmp_path / "n01440764" / f"{name}.png")
    paths = [r.path for r in list_images(tmp_path)]
    assert paths == sorted(paths) and len(paths) == 3


# ---------------------------------------------------------------------- bad folders
def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_root_is_a_file(tmp_path):
    f = write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="not a directory"):
        list_images(f)


def test_empty_folder(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)


def test_images_without_labels(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="labels.csv"):
        list_images(tmp_path)


# ------------------------------------------------------------------ decoding and batches
def test_dataset_item_is_rgb_tensor_and_label(tmp_path):
    gray = write_image(tmp_path / "g.png", mode="L")
    dataset = ImageDataset([ImageRecord(gray, 5)], TINY)
    image, label = dataset[0]
    assert len(dataset) == 1
    assert label == 5
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full_like(image, 128 / 255))


def test_corrupt_image_names_the_file(tmp_path):
    write_flat(tmp_path, [("good.png", "0")])
    (tmp_path / "bad.JPEG").write_bytes(os.urandom(256))
    (tmp_path / "labels.csv").write_text("file,label\ngood.png,0\nbad.JPEG,1\n")
    records = list_images(tmp_path)
    dataset = ImageDataset(records, TINY)
    bad_index = [r.path.name for r in records].index("bad.JPEG")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.JPEG") as info:
        dataset[bad_index]
    assert info.value.__cause__ is not None


# ------------------------------------------------------------------------- real sample
@pytest.mark.real_model
def test_real_sample_folder():
    root = default_sample_images()
    if root is None:
        pytest.skip("shared imagenet-sample folder not found")
    records = list_images(root)
    assert len(records) == 1000
    labels = [r.label for r in records]
    assert sorted(labels) == list(range(1000))
    synsets = (root / "synsets.txt").read_text().split()
    assert all(r.path.name.startswith(synsets[r.label] + "_") for r in records)
