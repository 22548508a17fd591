"""The ops of a ``.vqm`` integer program (:mod:`vitquant.integer.program`): what each computes from
what, and the dtype, shape and value range of every constant it reads (weights, requantization
multipliers and shifts, ...), under a summary of the program's header."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vitquant.inspection.table import Inspection, compact_number, compact_range, select_rows
from vitquant.integer.program import IntegerProgram
from vitquant.quantizers.summary import tensor_stats

__all__ = ["COLUMNS", "program_inspection"]

COLUMNS = ("op", "kind", "output", "inputs", "constants")


def _constant(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {"tensor": name, "dtype": str(tensor.dtype).removeprefix("torch."), **tensor_stats(tensor)}


def _row(index: int, op: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"index": index, "kind": op.kind, "output": op.output, "inputs": list(op.inputs), "attrs": op.attrs,
            "constants": {role: _constant(name, tensors[name]) for role, name in op.constants.items()}}


def _constants_cell(constants: dict[str, dict[str, Any]]) -> str:
    """``role dtype[AxB] min..max`` of every constant (``role dtype value`` for a single element)."""
    parts = []
    for role, c in constants.items():
        shape = "" if math.prod(c["shape"]) == 1 else f"[{'x'.join(map(str, c['shape']))}]"
        parts.append(f"{role} {c['dtype']}{shape} {compact_range(c)}")
    return ", ".join(parts) or "-"


def _nested(data: Any, *keys: str) -> dict[str, Any]:
    """``data[k1][k2]...`` when each is a dict, else an empty dict (the header's ``info`` is free-form)."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _summary(path: Path, program: IntegerProgram) -> list[str]:
    info = program.info
    size = sum(t.numel() * t.element_size() for t in program.tensors.values())
    roles = _nested(info, "qconfig", "roles")
    quantizers = ", ".join(f"{role} {spec.get('name')}/{spec.get('bits')}b" for role, spec in roles.items()
                           if isinstance(spec, dict)) or "?"
    kernels = ", ".join(f"{op} {family}" for op, family in _nested(info, "qconfig", "nonlinear", "ops").items()) or "?"
    return [
        f"{path}: integer program, {len(program.ops)} ops, {len(program.tensors)} constant tensors ({size / 1e6:.2f} MB)",
        f"{info.get('timm_model') or info.get('model', '?')}  commit {str(info.get('commit') or '?')[:7]}  "
        f"input scale {compact_number(program.input_scale)} zero point {program.input_zero_point} {program.input_bits} bits  "
        f"output scale {compact_number(program.output_scale)}",
        f"quantizers: {quantizers}; kernels: {kernels}",
    ]


def program_inspection(path: str | Path, program: IntegerProgram, op: str | None = None) -> Inspection:
    """One row per op of ``program`` (only those of kind ``op`` when given)."""
    path = Path(path)
    rows = select_rows([_row(i, o, program.tensors) for i, o in enumerate(program.ops)], "kind", op, "--op", str(path))
    cells = [[str(r["index"]), r["kind"], r["output"], ", ".join(r["inputs"]), _constants_cell(r["constants"])] for r in rows]
    return Inspection(str(path), "program", _summary(path, program), COLUMNS, rows, cells)
