"""Image folders -> labelled records -> decoded images (batches and the bad-image policy: :mod:`vitquant.data.batches`).

Three folder layouts are understood, detected in this order by :func:`list_images`:

(a) **flat with labels**: images plus ``labels.csv`` with header ``file,label`` (label = ImageNet
    class index 0..999), e.g. the shared ``imagenet-sample``;
(b) **ImageNet root**: ``val/<wnid>/*.JPEG`` and/or ``train/<wnid>/*.JPEG``; ``split`` picks the
    subfolder (``"train"`` falls back to ``"val"`` when there is no ``train/``);
(c) **class folders**: ``<wnid>/*`` directly under the root.

For (b) and (c) the class index of a folder is its line number in ``synsets.txt`` (looked up in the
split folder, then the root), else its ImageNet-1k index when the folders are wnids (right also when
only some classes are present); other folder names without ``synsets.txt`` are an error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vitquant.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp"})
NUM_IMAGENET_CLASSES = 1000
LABELS_FILE = "labels.csv"
SYNSETS_FILE = "synsets.txt"

Transform = Callable[[Image.Image], Any]


@dataclass(frozen=True)
class ImageRecord:
    """One image file and its class index."""

    path: Path
    label: int


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (hidden ones skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ----------------------------------------------------------------------------- layout (a)
def _parse_label(text: str, where: str) -> int:
    try:
        label = int(text.strip())
    except ValueError:
        raise DataError(f"{where}: label {text!r} is not an integer") from None
    if not 0 <= label < NUM_IMAGENET_CLASSES:
        raise DataError(f"{where}: label {label} is outside 0..{NUM_IMAGENET_CLASSES - 1}")
    return label


def _read_labels_csv(root: Path) -> list[ImageRecord]:
    """Records listed in ``root/labels.csv`` (header ``file,label``), every file checked to exist."""
    csv_path = root / LABELS_FILE
    records: list[ImageRecord] = []
    seen: set[str] = set()
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [cell.strip() for cell in next(reader, [])]
        if header != ["file", "label"]:
            raise DataError(f"{csv_path}:1: expected header 'file,label', got {','.join(header)!r}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise DataError(f"{where}: expected 2 fields 'file,label', got {len(row)}")
            name = row[0].strip()
            if name in seen:
                raise DataError(f"{where}: file {name!r} is listed twice")
            seen.add(name)
            path = root / name
            if not path.is_file():
                raise DataError(f"{where}: image file {name!r} does not exist in {root}")
            records.append(ImageRecord(path, _parse_label(row[1], where)))
    return records


# ------------------------------------------------------------------------ layouts (b), (c)
def _read_synsets(path: Path) -> dict[str, int]:
    """wnid -> class index from a ``synsets.txt`` (first token of each non-empty line)."""
    index: dict[str, int] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in index:
            raise DataError(f"{path}:{line_no}: synset {tokens[0]!r} is listed twice")
        index[tokens[0]] = len(index)
    return index


def _imagenet_1k_index() -> dict[str, int]:
    """The standard ImageNet-1k wnid -> class index (timm's copy of the synset list)."""
    from timm.data import ImageNetInfo

    return {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}


def _class_index(class_dirs: list[Path], synset_dirs: Sequence[Path]) -> dict[str, int]:
    """Class index per folder name: from the first ``synsets.txt`` found, else the ImageNet-1k index
    of wnid-named folders (correct also when only some classes are present)."""
    synsets = next((f / SYNSETS_FILE for f in synset_dirs if (f / SYNSETS_FILE).is_file()), None)
    index = _read_synsets(synsets) if synsets is not None else _imagenet_1k_index()
    unknown = [d.name for d in class_dirs if d.name not in index]
    if unknown:
        known = (
            f"listed in {synsets}"
            if synsets is not None
            else f"ImageNet-1k wnids, and no {SYNSETS_FILE} gives the class order (line i = folder of class i)"
        )
        raise DataError(f"class folder(s) {unknown[:5]} ({len(unknown)} in total) are not {known}")
    return index


def _read_class_folders(folder: Path, synset_dirs: Sequence[Path]) -> list[ImageRecord]:
    """Records from ``folder/<class>/<image>`` (images directly in a class folder only)."""
    class_dirs = _class_dirs(folder)
    index = _class_index(class_dirs, synset_dirs)
    return [
        ImageRecord(path, index[class_dir.name])
        for class_dir in class_dirs
        for path in class_dir.iterdir()
        if _is_image(path)
    ]


def _has_class_folders(folder: Path) -> bool:
    """True if some sub-folder of ``folder`` directly holds an image."""
    return any(any(_is_image(p) for p in d.iterdir()) for d in _class_dirs(folder))


def _imagenet_split_dir(root: Path, split: str) -> Path:
    """``root/split``; ``train`` falls back to ``val`` when ``root/train`` does not exist."""
    folder = root / split
    if folder.is_dir():
        return folder
    if split == "train" and (root / "val").is_dir():
        logger.warning("%s has no train/ folder: using val/ instead", root)
        return root / "val"
    available = [d.name for d in (root / "train", root / "val") if d.is_dir()]
    raise DataError(f"ImageNet folder {root} has no {split!r} split (found: {available})")


def _is_imagenet_root(root: Path) -> bool:
    return any((root / name).is_dir() and _has_class_folders(root / name) for name in ("train", "val"))


def _reject_split_names_as_classes(root: Path) -> None:
    """A ``train/`` or ``val/`` holding images directly is a split without class folders, not a class."""
    for name in ("train", "val"):
        folder = root / name
        if folder.is_dir() and any(_is_image(p) for p in folder.iterdir()):
            raise DataError(
                f"{folder} holds images directly: an ImageNet split needs <wnid>/ class sub-folders "
                f"(or put a {LABELS_FILE} with header 'file,label' in it and pass that folder)"
            )


# ------------------------------------------------------------------------------- public
def list_images(root: Path | str, split: str = "val") -> list[ImageRecord]:
    """List the labelled images under ``root``, sorted by path (see the module docstring).

    ``split`` is only used for the ImageNet-root layout. Raises :class:`DataError` for a missing
    root, a root that is not a directory, an unknown layout, bad labels, or no images at all.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")

    if (root / LABELS_FILE).is_file():
        layout, records = "labels.csv", _read_labels_csv(root)
    elif _is_imagenet_root(root):
        split_dir = _imagenet_split_dir(root, split)
        layout, records = f"ImageNet {split_dir.name}/", _read_class_folders(split_dir, (split_dir, root))
    elif _has_class_folders(root):
        _reject_split_names_as_classes(root)
        layout, records = "class folders", _read_class_folders(root, (root,))
    elif any(_is_image(p) for p in root.iterdir()):
        raise DataError(
            f"{root} holds images but no {LABELS_FILE} (header 'file,label'): cannot tell their labels"
        )
    else:
        raise DataError(
            f"no images found in {root}: expected {LABELS_FILE}, val/<wnid>/ or train/<wnid>/ "
            f"sub-folders, or <class>/ sub-folders (extensions {sorted(IMAGE_EXTENSIONS)})"
        )

    if not records:
        raise DataError(f"no images found in {root} ({layout} layout)")
    records.sort(key=lambda r: r.path)
    logger.info("found %d images in %s (%s layout)", len(records), root, layout)
    return records


def _load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image, or raise :class:`DataError`."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image file {path} does not exist") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


class ImageDataset(Dataset):
    """Map-style dataset over :class:`ImageRecord` s: item ``i`` is ``(transform(rgb_image), label)``."""

    def __init__(self, records: Sequence[ImageRecord], transform: Transform) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        record = self.records[index]
        return self.transform(_load_rgb(record.path)), record.label
