"""The ops table of a ``.vqm`` integer program: the tiny ViT's program, and files the reader refuses."""

from __future__ import annotations

import shutil

import pytest
import torch

from vitquant.errors import ConfigError, ModelFileError
from vitquant.inspection import inspect_file
from vitquant.inspection.table import compact_number
from vitquant.integer.program import IntegerProgram


def test_table_of_a_tiny_program(tiny_job_files):
    _, path = tiny_job_files
    program = IntegerProgram.load(path)
    inspection = inspect_file(path)
    assert inspection.source == "program" and len(inspection.rows) == len(program.ops)
    text = inspection.format()
    assert text.startswith(f"{path}: integer program, {len(program.ops)} ops, {len(program.tensors)} constant tensors")
    assert "deit_tiny_patch16_224  commit " in text and f"zero point {program.input_zero_point} 8 bits" in text
    assert "post_softmax BitLog2_Half_17/4b" in text and "kernels: softmax ibert, gelu ibert, layernorm ibert" in text
    lines = text.split("\n\n")[1].splitlines()
    assert lines[0].split() == ["op", "kind", "output", "inputs", "constants"]
    for op, row, line in zip(program.ops, inspection.rows, lines[1:], strict=True):
        assert line.split()[:3] == [str(row["index"]), op.kind, op.output]
        assert row["inputs"] == list(op.inputs)
        for role, name in op.constants.items():  # every constant: dtype, shape and value range
            tensor, stats = program.tensors[name], row["constants"][role]
            assert stats["tensor"] == name and stats["shape"] == list(tensor.shape)
            assert stats["dtype"] == str(tensor.dtype).removeprefix("torch.")
            assert stats["min"] == pytest.approx(tensor.min().item(), rel=5e-6)
            assert stats["max"] == pytest.approx(tensor.max().item(), rel=5e-6)
            assert f"{role} {stats['dtype']}" in line
    requant = next(row for row in inspection.rows if row["kind"] == "requant" and row["constants"]["multiplier"]["shape"])
    multiplier = program.tensors[requant["constants"]["multiplier"]["tensor"]]
    line = lines[1 + requant["index"]]
    shape = "x".join(map(str, multiplier.shape))
    assert f"multiplier int64[{shape}] {int(multiplier.min())}..{int(multiplier.max())}" in line
    assert all(isinstance(requant["constants"][k]["min"], int) for k in ("multiplier", "shift", "low", "high"))
    layernorm = next(row for row in inspection.rows if row["kind"] == "layernorm")
    assert f"scale float64 {compact_number(layernorm['constants']['scale']['min'])}," in lines[1 + layernorm["index"]]


def test_op_filter(tiny_job_files):
    _, path = tiny_job_files
    inspection = inspect_file(path, op="linear")
    assert {row["kind"] for row in inspection.rows} == {"linear"} and len(inspection.rows) == 2 * 4 + 2
    with pytest.raises(ConfigError, match=r"--op 'linaer': nothing of that kind .*; present: add, add_const, "):
        inspect_file(path, op="linaer")
    with pytest.raises(ConfigError, match="--role filters a report's points; .* is an integer program"):
        inspect_file(path, role="weight")


def test_damaged_programs_give_the_reader_errors(tiny_job_files, tmp_path):
    _, path = tiny_job_files
    data = path.read_bytes()
    corrupted = tmp_path / "corrupted.vqm"
    corrupted.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    with pytest.raises(ModelFileError, match="is corrupted: its content does not match its sha256 digest"):
        inspect_file(corrupted)
    truncated = tmp_path / "truncated.bin"  # told by content, whatever the name
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="is truncated"):
        inspect_file(truncated)
    with pytest.raises(ModelFileError, match="model file not found"):
        inspect_file(tmp_path / "missing.vqm")
    garbage = tmp_path / "garbage.vqm"
    garbage.write_bytes(bytes(range(7, 207)))
    with pytest.raises(ModelFileError, match="not a vitquant model file"):
        inspect_file(garbage)
    renamed = tmp_path / "program.data"
    shutil.copy(path, renamed)
    assert len(inspect_file(renamed).rows) == len(IntegerProgram.load(path).ops)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(ModelFileError, match="not a vitquant model file .*without vitquant metadata"):
        inspect_file(weights)
