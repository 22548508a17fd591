"""The ``.vqm`` container: one file holding a quantized model's tensors and its JSON header.

Layout
    A ``.vqm`` file is a plain `safetensors <https://github.com/huggingface/safetensors>`_ file: an 8-byte
    little-endian header length, a JSON header listing every tensor (name, dtype, shape, byte offsets) and
    a ``__metadata__`` map of strings, then the raw little-endian tensor bytes. Any safetensors reader can
    list and load the tensors; this module adds the checks below.

Tensors
    Names are ``str``; dtypes are those in :data:`SUPPORTED_DTYPES` (int8/16/32/64, uint8 for the integer
    program, float32/float64 for scales); any shape, including 0-d and empty. Values round-trip bit for bit.
    :func:`read_vqm` returns the tensors sorted by name, as CPU tensors that own their memory.

Metadata keys (all values are strings, as safetensors requires)
    - ``vitquant.format``: :data:`FORMAT_NAME`; a file without it is "not a vitquant model file".
    - ``vitquant.format_version``: :data:`FORMAT_VERSION` in decimal.
    - ``vitquant.header``: the caller's header (the program's graph and configuration), a JSON object.
      It must be plain JSON data: dicts with ``str`` keys, lists/tuples (read back as lists), ``str``,
      ``int``, finite ``float``, ``bool``, ``None``.
    - ``vitquant.sha256``: the integrity digest, hex.

Integrity check
    ``vitquant.sha256`` is the SHA-256 of, in this order and each field preceded by its byte length as an
    8-byte little-endian integer: the format name, the version string and the header text, then for every
    tensor sorted by name its name, its dtype name (``"int8"``, ``"float32"``...), its shape as JSON and its
    raw bytes. A changed byte in the data or in the header makes the digest disagree (or makes safetensors
    reject the file), so corruption is reported instead of loading wrong numbers.

Version policy
    :data:`FORMAT_VERSION` changes whenever a file written by the new code could be misread by the old code
    (layout, metadata keys, digest, or the meaning of the header). A reader accepts its own version only;
    a file of any other version is refused with a message naming both versions. The format name and
    version are checked before the digest, so a later version may change how the digest is computed.

Safety
    Loading never executes code from the file: no pickle, only safetensors' parser (which checks the
    header and that the byte offsets cover the data exactly) and :func:`json.loads`.

Writing is atomic: the file is written under a temporary name in the destination folder, flushed to
disk and renamed over the final name with :func:`os.replace`, so a crash or an error leaves either the
previous file or the complete new one, never a partial file. Every failure, on writing or reading,
raises :class:`~vitquant.errors.ModelFileError` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
import torch

from vitquant.errors import ModelFileError

FORMAT_NAME = "vitquant-integer-program"
FORMAT_VERSION = 1
SUFFIX = ".vqm"

KEY_FORMAT = "vitquant.format"
KEY_VERSION = "vitquant.format_version"
KEY_HEADER = "vitquant.header"
KEY_DIGEST = "vitquant.sha256"

SUPPORTED_DTYPES = (
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float32, torch.float64
)

_RESERVED_NAME = "__metadata__"  # safetensors' own key in the file header: not usable as a tensor name
_SAFETENSORS_MIN_BYTES = 9  # 8-byte header length and the '{' opening the JSON header


def write_vqm(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Write ``tensors`` and the JSON-able ``header`` atomically as one ``.vqm`` file at ``path``.

    Tensors may live on any device and need not be contiguous (they are copied to contiguous CPU memory).
    Raises :class:`ModelFileError` for a non-``str`` name, an unsupported dtype, a header that is not plain
    JSON data, or an OS error while writing (the previous file at ``path``, if any, is then left intact).
    """
    path = Path(path)
    arrays = _to_arrays(path, tensors)
    metadata = {KEY_FORMAT: FORMAT_NAME, KEY_VERSION: str(FORMAT_VERSION), KEY_HEADER: _encode_header(path, header)}
    metadata[KEY_DIGEST] = _digest(metadata, arrays)
    _save_atomically(path, arrays, metadata)


def read_vqm(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``.vqm`` file: ``(tensors by name, header)``, after checking format, version and digest.

    Raises :class:`ModelFileError` if ``path`` is missing or not a regular file, is not a safetensors file,
    is truncated or corrupted, is not a vitquant model file, or has another format version.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            _check_metadata(path, metadata)
            # clone: safetensors maps the file, and the caller's tensors must not change with it
            tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
    except safetensors.SafetensorError as err:
        raise ModelFileError(f"model file {path} {_diagnose(path)} (safetensors: {err})") from err
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err}") from err
    for name, tensor in tensors.items():
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ModelFileError(
                f"model file {path} is corrupted: tensor {name!r} has dtype {tensor.dtype}, "
                f"which a version {FORMAT_VERSION} file never holds"
            )
    if _digest(metadata, {name: t.numpy() for name, t in tensors.items()}) != metadata[KEY_DIGEST]:
        raise ModelFileError(
            f"model file {path} is corrupted: its content does not match its sha256 digest "
            "(bytes changed after it was written)"
        )
    return tensors, _decode_header(path, metadata[KEY_HEADER])


def _to_arrays(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Contiguous CPU numpy views of ``tensors``, after checking names and dtypes."""
    if not isinstance(tensors, Mapping):
        raise ModelFileError(f"cannot write {path}: tensors must be a dict of str to torch.Tensor, "
                             f"got {type(tensors).__name__}")
    arrays = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == _RESERVED_NAME:
            raise ModelFileError(f"cannot write {path}: tensor name {name!r} is not allowed "
                                 f"(names are str other than {_RESERVED_NAME!r})")
        if not isinstance(tensor, torch.Tensor) or tensor.layout is not torch.strided:
            raise ModelFileError(f"cannot write {path}: {name!r} is not a dense torch.Tensor")
        if tensor.dtype not in SUPPORTED_DTYPES:
            supported = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            raise ModelFileError(f"cannot write {path}: tensor {name!r} has dtype {tensor.dtype}; "
                                 f"supported: {supported}")
        arrays[name] = tensor.detach().cpu().contiguous().numpy()
    return arrays


def _encode_header(path: Path, header: dict[str, Any]) -> str:
    """The header as compact JSON text, after checking that it is plain JSON data."""
    if not isinstance(header, dict):
        raise ModelFileError(f"cannot write {path}: the header must be a dict, got {type(header).__name__}")
    try:
        _check_json(path, header, "header")
    except RecursionError as err:
        raise ModelFileError(f"cannot write {path}: the header is nested too deeply or refers to itself") from err
    return json.dumps(header, allow_nan=False, separators=(",", ":"))


def _check_json(path: Path, value: Any, where: str) -> None:
    """Raise unless ``value`` is JSON data that reads back equal (up to tuples becoming lists)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFileError(f"cannot write {path}: {where} is {value}, which JSON cannot hold")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(path, item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelFileError(f"cannot write {path}: {where} has the key {key!r}; JSON keys are str")
            _check_json(path, item, f"{where}[{key!r}]")
        return
    raise ModelFileError(f"cannot write {path}: {where} is a {type(value).__name__}, which is not JSON data "
                         "(use dict, list, str, int, float, bool or None)")


def _digest(metadata: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of format, version, header and every tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256()

    def field(data: bytes | np.ndarray) -> None:
        sha.update(len(data).to_bytes(8, "little"))
        sha.update(data)

    for key in (KEY_FORMAT, KEY_VERSION, KEY_HEADER):
        field(metadata[key].encode())
    for name in sorted(arrays):
        array = arrays[name]
        field(name.encode())
        field(str(array.dtype).encode())
        field(json.dumps(list(array.shape)).encode())
        field(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return sha.hexdigest()


def _save_atomically(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        try:
            safetensors.numpy.save_file(arrays, str(tmp), metadata=metadata)
            _fsync(tmp, os.O_RDONLY)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except (OSError, safetensors.SafetensorError) as err:
        raise ModelFileError(f"cannot write model file {path}: {err}") from err
    with contextlib.suppress(OSError):  # make the rename durable; not possible on every platform
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_regular_file(path: Path) -> None:
    """Raise unless ``path`` exists and is a regular file (links to one are fine)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as err:
        raise ModelFileError(f"model file not found: {path}") from err
    except OSError as err:
        raise ModelFileError(f"cannot access model file {path}: {err}") from err
    if stat.S_ISDIR(mode):
        raise ModelFileError(f"model file {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ModelFileError(f"model file {path} is not a regular file")


def _check_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Raise unless the safetensors metadata names this format and version and holds header and digest."""
    if metadata.get(KEY_FORMAT) != FORMAT_NAME:
        found = (f"its format is {metadata[KEY_FORMAT]!r}" if KEY_FORMAT in metadata
                 else "a safetensors file without vitquant metadata")
        raise ModelFileError(f"{path} is not a vitquant model file ({found})")
    version = metadata.get(KEY_VERSION, "")
    if version != str(FORMAT_VERSION):
        if not version.isdigit():
            raise ModelFileError(f"model file {path} has an unreadable format version {version!r}; "
                                 f"this vitquant reads version {FORMAT_VERSION}")
        advice = "upgrade vitquant" if int(version) > FORMAT_VERSION else "export the model again"
        raise ModelFileError(f"model file {path} is format version {int(version)}; this vitquant reads "
                             f"version {FORMAT_VERSION} only ({advice})")
    missing = [key for key in (KEY_HEADER, KEY_DIGEST) if key not in metadata]
    if missing:
        raise ModelFileError(f"model file {path} is corrupted: its metadata lacks {', '.join(missing)}")


def _decode_header(path: Path, text: str) -> dict[str, Any]:
    """The header text parsed; it must be a JSON object."""
    try:
        header = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"model file {path} is corrupted: its header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"model file {path} is corrupted: its header is a JSON "
                             f"{type(header).__name__}, not an object")
    return header


def _diagnose(path: Path) -> str:
    """Why safetensors refused ``path``: empty, truncated, not safetensors at all, or otherwise corrupted."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_SAFETENSORS_MIN_BYTES)
    except OSError:
        return "is unreadable"
    if size == 0:
        return "is empty (0 bytes)"
    if len(head) < _SAFETENSORS_MIN_BYTES:
        return f"is truncated ({size} bytes, shorter than any safetensors file)"
    if head[8:9] != b"{":
        return "is not a vitquant model file (not a safetensors file)"
    declared = int.from_bytes(head[:8], "little")
    if 8 + declared > size:
        return f"is truncated: its header declares {declared} bytes of JSON but the file has {size} bytes"
    return "is truncated or corrupted (not a valid safetensors file)"
