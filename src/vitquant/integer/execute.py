"""Run an integer program: quantize the image, then integer ops only.

:class:`IntegerModel` is what :func:`vitquant.load` returns. ``backend="int"`` runs every op on integer
tensors: with ``gemm="int"`` (the strict executor) the ops of :mod:`~vitquant.integer.ops` on ``int64``
only, matmuls by torch's int64 matmul; with ``gemm="float"`` the fast executor
(:mod:`~vitquant.integer.fast`: ops prepared once, exact float GEMMs and float64 rounding where static
bounds prove them exact, values in int32 where they fit; ``compile=True`` also compiles the prepared
program with ``torch.compile``), tested to give the same integers. ``backend="float"`` runs the ops on
float64 integers with floors (the simulation twin, bit for bit equal). With ``strict`` (default) the
integer backend checks after every op that no floating-point tensor was produced (the fast executor
always does); the only float steps between ops are the image quantization before the first op and the
one multiplication by the output scale in :meth:`IntegerModel.__call__`. Needs no timm.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitquant.errors import ConfigError
from vitquant.integer.fast import FastProgram
from vitquant.integer.ops import OPS, Context, StrictModeError
from vitquant.integer.program import IntegerProgram
from vitquant.kernels.arith import BACKENDS, Arith


def quantize_image(images: torch.Tensor, scale: float, zero_point: int, bits: int) -> torch.Tensor:
    """``clamp(round(image · (1/S)), -z, 2^b - 1 - z)`` in float32 (1/S rounded to float32 first), as the
    model's first quantizer computes it: the codes minus the zero point, float32 integers."""
    inv = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return (images.to(torch.float32) * inv).round().clamp(-zero_point, 2**bits - 1 - zero_point)


def prepare_constant(t: torch.Tensor, arith: Arith) -> torch.Tensor:
    """An integer constant in the backend's dtype (float constants, e.g. LayerNorm affine, stay float64)."""
    if t.is_floating_point():
        return t.to(torch.float64)
    return t.to(arith.dtype)


class IntegerModel:
    """A callable integer program: ``model(images) -> float logits`` (integer logits · output scale)."""

    def __init__(self, program: IntegerProgram, backend: str = "int", gemm: str = "int", strict: bool = True,
                 compile: bool = False) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose int or float")
        if gemm not in ("int", "float"):
            raise ConfigError(f"unknown gemm backend {gemm!r}; choose int or float")
        if compile and (backend, gemm) != ("int", "float"):
            raise ConfigError("compile=True compiles the fast executor: use backend='int' with gemm='float'")
        program.validate()
        self.program = program
        self.ctx = Context(BACKENDS[backend], gemm)
        self.strict = strict and self.ctx.arith.is_integer
        self._consts = {name: prepare_constant(t, self.ctx.arith) for name, t in program.tensors.items()}
        fast = self.ctx.arith.is_integer and gemm == "float"
        self._fast = FastProgram(program, self._consts, compile=compile) if fast else None

    @property
    def compile_seconds(self) -> float | None:
        """Seconds of the first compiled run (tracing, compiling and one run), None before it or without compile."""
        return None if self._fast is None else self._fast.compile_seconds

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """``clamp(round(image / S), -z, 2^b - 1 - z)`` as the model's first quantizer computes it (float32)."""
        if not images.is_floating_point() or images.dim() != 4:
            raise ConfigError(f"images must be a float tensor [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ConfigError("images contain NaN or inf")
        p = self.program
        return quantize_image(images, p.input_scale, p.input_zero_point, p.input_bits).to(self.ctx.arith.dtype)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """Integer logits (``int64``, or float64 integers for the float backend)."""
        x = self.quantize_input(images)
        if self._fast is not None:
            return self._fast(x)
        env = {"input": x}
        for op in self.program.ops:
            consts = {role: self._consts[name] for role, name in op.constants.items()}
            out = OPS[op.kind]([env[n] for n in op.inputs], consts, op.attrs, self.ctx)
            if self.strict and out.is_floating_point():
                raise StrictModeError(f"op {op.kind} -> {op.output} produced a {out.dtype} tensor in an integer-only run")
            env[op.output] = out
        return env["logits"]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).to(torch.float64).mul(self.program.output_scale).to(torch.float32)


def load(path: str | Path, backend: str = "int", gemm: str = "float", strict: bool = True,
         compile: bool = False) -> IntegerModel:
    """The integer model saved at ``path`` (a ``.vqm`` file written by ``vitquant quantize --save``); the
    fast executor by default (``gemm="float"``: the strict int64 executor's integers, tested bit for bit;
    ``gemm="int"`` runs the strict executor itself)."""
    return IntegerModel(IntegerProgram.load(path), backend=backend, gemm=gemm, strict=strict, compile=compile)
