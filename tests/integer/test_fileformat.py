"""The .vqm container: exact round trips, atomic writes, and a ModelFileError for every damaged or foreign file."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

from vitquant.errors import ModelFileError, VitQuantError
from vitquant.integer import fileformat
from vitquant.integer.fileformat import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KEY_DIGEST,
    KEY_FORMAT,
    KEY_HEADER,
    KEY_VERSION,
    SUPPORTED_DTYPES,
    read_vqm,
    write_vqm,
)

HEADER = {
    "graph": [{"op": "linear", "inputs": ["x"], "shift": 7}, {"op": "gelu", "bits": 8, "table": None}],
    "config": {"nested": {"deeper": [1, [2, [3.5, -0.0]], {"flag": True}]}, "big": 2**62, "text": "ünï\"\\"},
    "empty": {},
}


def _extreme_values(dtype: torch.dtype) -> torch.Tensor:
    """Each dtype's extremes and awkward values (min/max, zero, NaN with payload, inf, -0, subnormal)."""
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        values = [info.min, info.max, info.tiny, info.tiny / 4, 0.0, -0.0, float("inf"), float("-inf"), 1 / 3]
        base = torch.tensor(values, dtype=dtype)
        nan = torch.full((1,), float("nan"), dtype=dtype)
        return torch.cat([base, nan, -nan])
    info = torch.iinfo(dtype)
    return torch.tensor([info.min, info.min + 1, -1 if info.min < 0 else 1, 0, 1, info.max - 1, info.max], dtype=dtype)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Same names, and for each tensor the same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        tensor = got[name]
        assert tensor.dtype == expected.dtype, name
        assert tensor.shape == expected.shape, name
        assert tensor.device.type == "cpu", name
        assert tensor.numpy().tobytes() == expected.detach().cpu().contiguous().numpy().tobytes(), name


def _sample_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "blocks.0.weight": torch.randint(-128, 128, (6, 5), generator=gen, dtype=torch.int8),
        "blocks.0.bias": torch.randint(-(2**31), 2**31 - 1, (6,), generator=gen, dtype=torch.int32),
        "blocks.0.scale": torch.rand(6, generator=gen, dtype=torch.float64),
        "lut": torch.arange(256, dtype=torch.uint8),
    }


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A small valid .vqm file."""
    path = tmp_path / "model.vqm"
    write_vqm(path, _sample_tensors(), HEADER)
    return path


def _read_error(path: Path) -> str:
    """The ModelFileError message for reading ``path`` (which must name the path)."""
    with pytest.raises(ModelFileError) as info:
        read_vqm(path)
    message = str(info.value)
    assert str(path) in message
    return message


def _save_plain(path: Path, metadata: dict[str, str] | None, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """A safetensors file written without write_vqm (to fake other versions and foreign files)."""
    safetensors.torch.save_file(_sample_tensors() if tensors is None else tensors, str(path), metadata=metadata)


def _metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _with_digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``metadata`` with a digest that matches (so a test reaches the checks after the digest)."""
    arrays = {name: t.numpy() for name, t in tensors.items()}
    return {**metadata, KEY_DIGEST: fileformat._digest(metadata, arrays)}


def _folder_listing(path: Path) -> list[str]:
    return sorted(os.listdir(path.parent))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_round_trip_every_dtype_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {"values": _extreme_values(dtype), "matrix": _extreme_values(dtype).repeat(3, 1)}
    path = tmp_path / "m.vqm"
    write_vqm(path, tensors, {"dtype": str(dtype)})
    got, header = read_vqm(path)
    _assert_same(got, tensors)
    assert header == {"dtype": str(dtype)}


def test_supported_dtypes_are_the_documented_ones() -> None:
    assert set(SUPPORTED_DTYPES) == {
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float32, torch.float64
    }


def test_round_trip_empty_scalar_and_nested_header(tmp_path: Path) -> None:
    tensors = {
        "scalar_i64": torch.tensor(-(2**63), dtype=torch.int64),
        "scalar_f32": torch.tensor(0.1, dtype=torch.float32),
        "empty_1d": torch.zeros(0, dtype=torch.int8),
        "empty_2d": torch.zeros(3, 0, dtype=torch.float64),
        "": torch.tensor([1, 2], dtype=torch.int16),
    }
    path = tmp_path / "m.vqm"
    write_vqm(path, tensors, HEADER)
    got, header = read_vqm(path)
    _assert_same(got, tensors)
    assert got["scalar_i64"].shape == () and got["empty_2d"].shape == (3, 0)
    assert header == HEADER
    assert json.dumps(header) == json.dumps(HEADER)  # same key order, same types (int stays int)


def test_no_tensors_and_empty_header(tmp_path: Path) -> None:
    path = tmp_path / "m.vqm"
    write_vqm(path, {}, {})
    assert read_vqm(path) == ({}, {})


def test_non_contiguous_and_grad_tensors_are_copied(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.int32).reshape(4, 6)
    weight = torch.rand(3, 4, dtype=torch.float32, requires_grad=True)
    tensors = {"t": base.t(), "strided": base[:, ::2], "shared": base[1], "w": weight}
    assert not tensors["t"].is_contiguous()
    path = tmp_path / "m.vqm"
    write_vqm(path, tensors, {})
    got, _ = read_vqm(path)
    _assert_same(got, tensors)
    assert all(t.is_contiguous() and not t.requires_grad for t in got.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_written_from_a_cpu_copy(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(10, dtype=torch.int8, device="cuda")}
    write_vqm(tmp_path / "m.vqm", tensors, {})
    got, _ = read_vqm(tmp_path / "m.vqm")
    _assert_same(got, tensors)


def test_tuples_in_the_header_read_back_as_lists(tmp_path: Path) -> None:
    write_vqm(tmp_path / "m.vqm", {}, {"shape": (1, (2, 3))})
    assert read_vqm(tmp_path / "m.vqm")[1] == {"shape": [1, [2, 3]]}


def test_file_is_a_safetensors_file_with_the_documented_metadata(written: Path) -> None:
    metadata = _metadata(written)
    assert set(metadata) == {KEY_FORMAT, KEY_VERSION, KEY_HEADER, KEY_DIGEST}
    assert metadata[KEY_FORMAT] == FORMAT_NAME == "vitquant-integer-program"
    assert metadata[KEY_VERSION] == str(FORMAT_VERSION) == "1"
    assert json.loads(metadata[KEY_HEADER]) == HEADER
    assert len(metadata[KEY_DIGEST]) == 64 and int(metadata[KEY_DIGEST], 16) >= 0
    _assert_same(safetensors.torch.load_file(str(written)), _sample_tensors())


def test_read_tensors_own_their_memory(written: Path) -> None:
    got, _ = read_vqm(written)
    written.write_bytes(b"\0" * written.stat().st_size)  # in place: a mapped tensor would change with it
    _assert_same(got, _sample_tensors())


# ---------------------------------------------------------------- writing: bad input


@pytest.mark.parametrize(
    "tensors, fragment",
    [
        ({1: torch.zeros(2)}, "tensor name 1"),
        ({"__metadata__": torch.zeros(2)}, "'__metadata__'"),
        ({"w": np.zeros(2)}, "not a dense torch.Tensor"),
        ({"w": torch.zeros(2).to_sparse()}, "not a dense torch.Tensor"),
        ({"w": torch.zeros(2, dtype=torch.float16)}, "torch.float16"),
        ({"w": torch.zeros(2, dtype=torch.bool)}, "torch.bool"),
        ([("w", torch.zeros(2))], "dict of str"),
    ],
)
def test_write_rejects_bad_tensors(tmp_path: Path, tensors, fragment: str) -> None:
    path = tmp_path / "m.vqm"
    with pytest.raises(ModelFileError) as info:
        write_vqm(path, tensors, {})
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert _folder_listing(path) == []


def _self_referencing() -> dict:
    header: dict = {}
    header["me"] = header
    return header


@pytest.mark.parametrize(
    "header, fragment",
    [
        ({"scale": float("nan")}, "header['scale'] is nan"),
        ({"a": [1, {"b": float("inf")}]}, "header['a'][1]['b'] is inf"),
        ({"a": {3: "x"}}, "header['a'] has the key 3"),
        ({"w": np.zeros(2)}, "header['w'] is a ndarray"),
        ({"t": torch.tensor(1)}, "header['t'] is a Tensor"),
        ({"s": {1, 2}}, "header['s'] is a set"),
        ([1, 2], "must be a dict"),
        (_self_referencing(), "refers to itself"),
    ],
)
def test_write_rejects_headers_that_are_not_json_data(tmp_path: Path, header, fragment: str) -> None:
    path = tmp_path / "m.vqm"
    with pytest.raises(ModelFileError) as info:
        write_vqm(path, {}, header)
    assert fragment in str(info.value)
    assert _folder_listing(path) == []


def test_model_file_error_is_a_vitquant_error() -> None:
    assert issubclass(ModelFileError, VitQuantError)


# ---------------------------------------------------------------- writing: atomic


def test_atomic_write_leaves_only_the_final_file(written: Path) -> None:
    assert _folder_listing(written) == ["model.vqm"]
    write_vqm(written, {"x": torch.ones(3, dtype=torch.int64)}, {"v": 2})  # overwrite
    assert _folder_listing(written) == ["model.vqm"]
    got, header = read_vqm(written)
    _assert_same(got, {"x": torch.ones(3, dtype=torch.int64)})
    assert header == {"v": 2}


def _failing_save(exc: BaseException):
    """A stand-in for safetensors' writer that writes half a file, then fails with ``exc``."""

    def save_file(arrays, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"partial")
        raise exc

    return save_file


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_keeps_the_previous_file(written: Path, monkeypatch, exc: BaseException) -> None:
    before = written.read_bytes()
    monkeypatch.setattr(safetensors.numpy, "save_file", _failing_save(exc))
    expected = ModelFileError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        write_vqm(written, {"other": torch.zeros(5, dtype=torch.int8)}, {"new": True})
    if expected is ModelFileError:
        assert "No space left" in str(info.value) and str(written) in str(info.value)
    assert written.read_bytes() == before
    assert _folder_listing(written) == ["model.vqm"]
    monkeypatch.undo()
    _assert_same(read_vqm(written)[0], _sample_tensors())


def test_failure_at_rename_keeps_the_previous_file(written: Path, monkeypatch) -> None:
    before = written.read_bytes()

    def failing_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fileformat.os, "replace", failing_replace)
    with pytest.raises(ModelFileError, match="Permission denied"):
        write_vqm(written, {}, {})
    monkeypatch.undo()
    assert written.read_bytes() == before
    assert _folder_listing(written) == ["model.vqm"]


def test_write_into_a_missing_folder_or_over_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot write model file"):
        write_vqm(tmp_path / "missing" / "m.vqm", {}, {})
    (tmp_path / "dir.vqm").mkdir()
    with pytest.raises(ModelFileError, match="cannot write model file"):
        write_vqm(tmp_path / "dir.vqm", {}, {})
    assert _folder_listing(tmp_path / "dir.vqm") == ["dir.vqm"]


# ---------------------------------------------------------------- reading: damaged files


def _header_end(data: bytes) -> int:
    """Offset of the first tensor byte: 8 + the declared safetensors header length."""
    return 8 + int.from_bytes(data[:8], "little")


@pytest.mark.parametrize("where", ["empty", "4 bytes", "8 bytes", "9 bytes", "mid-header", "header only",
                                   "mid-data", "last byte missing"])
def test_truncated_files(written: Path, where: str) -> None:
    data = written.read_bytes()
    end = _header_end(data)
    length = {"empty": 0, "4 bytes": 4, "8 bytes": 8, "9 bytes": 9, "mid-header": end // 2, "header only": end,
              "mid-data": (end + len(data)) // 2, "last byte missing": len(data) - 1}[where]
    written.write_bytes(data[:length])
    message = _read_error(written)
    assert ("empty (0 bytes)" if length == 0 else "truncated") in message


def test_every_single_flipped_bit_is_detected(tmp_path: Path) -> None:
    """Flip the low bit of each byte of a small file in turn: header, metadata, digest and data alike."""
    path = tmp_path / "m.vqm"
    tensors = {"w": torch.tensor([[1, -2], [3, 4]], dtype=torch.int8), "s": torch.tensor([0.5], dtype=torch.float32)}
    write_vqm(path, tensors, {"g": [1, 2]})
    data = bytearray(path.read_bytes())
    survivors = []
    for i in range(len(data)):
        data[i] ^= 1
        path.write_bytes(bytes(data))
        data[i] ^= 1
        try:
            read_vqm(path)
        except ModelFileError:
            continue
        survivors.append(i)
    assert survivors == []


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_flipped_byte_in_tensor_data_fails_the_digest(written: Path, position: str) -> None:
    data = bytearray(written.read_bytes())
    end = _header_end(data)
    i = {"first": end, "middle": (end + len(data)) // 2, "last": len(data) - 1}[position]
    data[i] ^= 0x80
    written.write_bytes(bytes(data))
    assert "does not match its sha256 digest" in _read_error(written)


def test_edited_header_json_fails_the_digest(written: Path) -> None:
    data = written.read_bytes()
    edited = data.replace(b'\\"shift\\":7', b'\\"shift\\":9')  # same length: still a valid safetensors file
    assert edited != data and len(edited) == len(data)
    written.write_bytes(edited)
    assert json.loads(_metadata(written)[KEY_HEADER])["graph"][0]["shift"] == 9
    assert "does not match its sha256 digest" in _read_error(written)


def test_replaced_tensor_fails_the_digest(written: Path) -> None:
    tensors = _sample_tensors()
    tensors["lut"] = tensors["lut"].flip(0)
    _save_plain(written, _metadata(written), tensors)
    assert "digest" in _read_error(written)


# ---------------------------------------------------------------- reading: other versions and foreign files


@pytest.mark.parametrize("version, fragments", [
    ("2", ["format version 2", "reads version 1", "upgrade vitquant"]),
    ("0", ["format version 0", "reads version 1", "export the model again"]),
    ("1.1", ["unreadable format version '1.1'", "reads version 1"]),
    ("", ["unreadable format version ''"]),
])
def test_other_format_versions_are_refused(written: Path, version: str, fragments: list[str]) -> None:
    metadata = {**_metadata(written), KEY_VERSION: version}
    _save_plain(written, _with_digest(metadata, _sample_tensors()))
    message = _read_error(written)
    for fragment in fragments:
        assert fragment in message


def test_plain_safetensors_file_is_not_a_vitquant_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    _save_plain(path, None)
    assert "is not a vitquant model file (a safetensors file without vitquant metadata)" in _read_error(path)
    _save_plain(path, {"format": "pt"})
    assert "is not a vitquant model file" in _read_error(path)


def test_other_format_name_is_not_a_vitquant_file(written: Path) -> None:
    _save_plain(written, {**_metadata(written), KEY_FORMAT: "someone-else"})
    assert "is not a vitquant model file (its format is 'someone-else')" in _read_error(written)


def test_missing_header_or_digest(written: Path) -> None:
    metadata = _metadata(written)
    del metadata[KEY_DIGEST]
    _save_plain(written, metadata)
    assert "metadata lacks vitquant.sha256" in _read_error(written)


@pytest.mark.parametrize("header_text, fragment", [("[1, 2]", "a JSON list, not an object"),
                                                    ("{oops", "not valid JSON")])
def test_header_must_be_a_json_object(written: Path, header_text: str, fragment: str) -> None:
    metadata = {**_metadata(written), KEY_HEADER: header_text}
    _save_plain(written, _with_digest(metadata, _sample_tensors()))
    assert fragment in _read_error(written)


def test_unsupported_dtype_in_the_file(written: Path) -> None:
    tensors = {"half": torch.ones(2, dtype=torch.float16)}
    metadata = {KEY_FORMAT: FORMAT_NAME, KEY_VERSION: "1", KEY_HEADER: "{}", KEY_DIGEST: "0" * 64}
    _save_plain(written, metadata, tensors)
    assert "'half' has dtype torch.float16" in _read_error(written)


class _Touch:
    """Unpickling this creates a marker file: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_files_are_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.vqm"
    path.write_bytes(pickle.dumps({"w": _Touch(marker)}))
    assert "not a safetensors file" in _read_error(path)
    assert not marker.exists()
    torch.save({"w": torch.zeros(3)}, path)
    assert "not a safetensors file" in _read_error(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    gen = np.random.default_rng(7)
    path = tmp_path / "noise.vqm"
    for size in (3, 100, 5000):
        path.write_bytes(gen.integers(0, 256, size, dtype=np.uint8).tobytes())
        _read_error(path)


def test_json_header_pointing_beyond_the_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "m.vqm"
    path.write_bytes((1000).to_bytes(8, "little") + b'{"a": 1}')
    assert "header declares 1000 bytes" in _read_error(path)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    assert "not found" in _read_error(tmp_path / "nothing.vqm")
    assert "is a directory" in _read_error(tmp_path)
