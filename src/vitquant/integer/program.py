"""The integer program: what a calibrated model becomes for integer-only inference.

A program is plain data: a list of :class:`Op` (kind, input names, output name, JSON attributes, and the
names of constant tensors it reads) over named integer tensors, plus how the image is quantized on the
way in and the scale of the integer logits on the way out:

    x_int = clamp(round(image / S_in) + z_in, 0, 2^b - 1) - z_in        (the only floating-point step)
    env[op.output] = OPS[op.kind](env[op.inputs], constants, op.attrs)   (integers only)
    logits ≈ env["logits"] · output_scale

Constants are integer weights, biases, requantization multipliers and shifts, and the float parameters
a kernel derives its integer constants from (LayerNorm affine); :mod:`vitquant.integer.execute` runs it.
The program is saved as one ``.vqm`` file (:mod:`vitquant.integer.fileformat`): the tensors, and the
header below as JSON (``program_version`` for the op set, beside the container's format version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitquant.errors import ModelFileError
from vitquant.integer.fileformat import read_vqm, write_vqm

PROGRAM_VERSION = 1


@dataclass(frozen=True)
class Op:
    """One step: ``output = kind(inputs, constants, attrs)``."""

    kind: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)  # role -> tensor name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": list(self.inputs), "output": self.output,
                "attrs": self.attrs, "constants": self.constants}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        return cls(str(data["kind"]), tuple(str(i) for i in data["inputs"]), str(data["output"]),
                   dict(data["attrs"]), {str(k): str(v) for k, v in data["constants"].items()})


@dataclass
class IntegerProgram:
    """Ops, constant tensors, the input quantizer (scale, zero point, bits) and the output scale."""

    ops: list[Op]
    tensors: dict[str, torch.Tensor]
    input_scale: float
    input_zero_point: int
    input_bits: int
    output_scale: float
    info: dict[str, Any] = field(default_factory=dict)  # model name, qconfig, commit: for reports

    def header(self) -> dict[str, Any]:
        return {
            "program_version": PROGRAM_VERSION,
            "input": {"scale": self.input_scale, "zero_point": self.input_zero_point, "bits": self.input_bits},
            "output_scale": self.output_scale,
            "ops": [op.to_dict() for op in self.ops],
            "info": self.info,
        }

    def save(self, path: str | Path) -> None:
        write_vqm(path, self.tensors, self.header())

    @classmethod
    def load(cls, path: str | Path) -> IntegerProgram:
        tensors, header = read_vqm(path)
        version = header.get("program_version")
        if version != PROGRAM_VERSION:
            raise ModelFileError(
                f"{path}: integer program version {version!r}; this vitquant runs version {PROGRAM_VERSION}"
            )
        try:
            ops = [Op.from_dict(op) for op in header["ops"]]
            inp = header["input"]
            program = cls(ops, tensors, float(inp["scale"]), int(inp["zero_point"]), int(inp["bits"]),
                          float(header["output_scale"]), dict(header.get("info", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"{path}: malformed integer program header ({exc!r})") from exc
        program.validate(str(path))
        return program

    def validate(self, where: str = "integer program") -> None:
        """Every op kind exists, reads defined values and existing constants; logits are produced."""
        from vitquant.integer.ops import OPS, REQUIRED

        defined = {"input"}
        for i, op in enumerate(self.ops):
            if op.kind not in OPS:
                raise ModelFileError(f"{where}: op {i} has unknown kind {op.kind!r}")
            missing = [name for name in op.inputs if name not in defined]
            if missing:
                raise ModelFileError(f"{where}: op {i} ({op.kind}) reads undefined values {missing}")
            lacking = [role for role in REQUIRED[op.kind] if role not in op.constants]
            if lacking:
                raise ModelFileError(f"{where}: op {i} ({op.kind}) lacks its constants {lacking}")
            absent = [t for t in op.constants.values() if t not in self.tensors]
            if absent:
                raise ModelFileError(f"{where}: op {i} ({op.kind}) needs missing tensors {absent}")
            defined.add(op.output)
        if "logits" not in defined:
            raise ModelFileError(f"{where}: no op produces the logits")
        if not (self.input_scale > 0 and self.output_scale > 0) or not 2 <= self.input_bits <= 8:
            raise ModelFileError(f"{where}: invalid input/output scales or input bits")
