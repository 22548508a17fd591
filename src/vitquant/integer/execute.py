"""Run an integer program: quantize the image, then integer ops only.

:class:`IntegerModel` is what :func:`vitquant.load` returns. ``backend="int"`` runs every op on ``int64``
tensors (matmuls through :func:`~vitquant.kernels.gemm.int_matmul`, ``gemm="int"`` pure integer or
``"float"`` exact float GEMM); ``backend="float"`` runs the same arithmetic on float64 integers (the
simulation twin, bit for bit equal). With ``strict`` (default) the integer backend checks after every op
that no floating-point tensor was produced; the only float steps are the image quantization before the
first op and the one multiplication by the output scale in :meth:`IntegerModel.__call__`. Needs no timm.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitquant.errors import ConfigError, DtypeError
from vitquant.integer.ops import OPS, Context
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


class StrictModeError(DtypeError):
    """A floating-point tensor appeared inside an integer-only run."""


class IntegerModel:
    """A callable integer program: ``model(images) -> float logits`` (integer logits · output scale)."""

    def __init__(self, program: IntegerProgram, backend: str = "int", gemm: str = "int", strict: bool = True) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose int or float")
        if gemm not in ("int", "float"):
            raise ConfigError(f"unknown gemm backend {gemm!r}; choose int or float")
        program.validate()
        self.program = program
        self.ctx = Context(BACKENDS[backend], gemm)
        self.strict = strict and self.ctx.arith.is_integer
        self._consts = {name: prepare_constant(t, self.ctx.arith) for name, t in program.tensors.items()}

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
        env = {"input": self.quantize_input(images)}
        for op in self.program.ops:
            consts = {role: self._consts[name] for role, name in op.constants.items()}
            out = OPS[op.kind]([env[n] for n in op.inputs], consts, op.attrs, self.ctx)
            if self.strict and out.is_floating_point():
                raise StrictModeError(f"op {op.kind} -> {op.output} produced a {out.dtype} tensor in an integer-only run")
            env[op.output] = out
        return env["logits"]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).to(torch.float64).mul(self.program.output_scale).to(torch.float32)


def load(path: str | Path, backend: str = "int", gemm: str = "int", strict: bool = True) -> IntegerModel:
    """The integer model saved at ``path`` (a ``.vqm`` file written by ``vitquant quantize --save``)."""
    return IntegerModel(IntegerProgram.load(path), backend=backend, gemm=gemm, strict=strict)
