"""Integer kernels for the non-linear operators of a ViT, registered by (family, op).

A kernel receives integers and their scale and returns integers and a scale:

    y_int, y_scale = kernel(x_int, x_scale, arith)       (x ≈ x_int · x_scale, y ≈ y_int · y_scale)

written once against :class:`~vitquant.kernels.arith.Arith`, so the same code runs on ``int64``
tensors (the integer implementation) and on ``float64`` tensors (its float simulation, used by the
fake-quantized model); the two are equal bit for bit (tests). Integer constants a kernel derives from
the input scale (``floor(1/S)``, polynomial coefficients over S, ...) are computed once per call in
Python from the scale, as a converter would store them.

``op`` is one of :data:`OPS`; ``family`` one of the published methods (``ivit``, ``ibert``,
``fqvit``). :func:`make_kernel` builds one by name; :func:`kernel_choices` lists what exists per op
(FQ-ViT has no GELU kernel, so ``mixed`` chooses between two there).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import Arith

OPS = ("softmax", "gelu", "layernorm")
FAMILIES = ("ivit", "ibert", "fqvit")
Scale = torch.Tensor  # float64: a scalar, or one value per channel (last dim) for LayerNorm


class IntKernel(abc.ABC):
    """One integer approximation of a non-linear op.

    - ``input_format``: what the input quantization point must produce: ``"uniform"`` (one scale per
      tensor) or ``"ptf"`` (FQ-ViT's per-channel power-of-two factors over one scale);
    - ``out_bits``: bit width of the integer output where the kernel fixes it (softmax, GELU sigmoid).
    """

    op: ClassVar[str] = ""
    family: ClassVar[str] = ""
    input_format: ClassVar[str] = "uniform"
    elementwise: ClassVar[bool] = False

    def __init__(self, out_bits: int = 8) -> None:
        if not 2 <= out_bits <= 16:
            raise ConfigError(f"{self.name}: output bits must be within 2..16, got {out_bits}")
        self.out_bits = out_bits

    @property
    def name(self) -> str:
        return f"{self.family}.{self.op}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(out_bits={self.out_bits})"


class SoftmaxKernel(IntKernel):
    op = "softmax"

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """Softmax over the last dim of integers ``x`` with scalar ``scale``."""


class GeluKernel(IntKernel):
    """Elementwise: the output at an element depends on that element only (tests check it), so a
    simulation may tabulate the kernel over every input integer."""

    op = "gelu"
    elementwise: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """GELU of integers ``x`` with scalar ``scale``."""


class LayerNormKernel(IntKernel):
    op = "layernorm"

    @abc.abstractmethod
    def __call__(
        self, x: torch.Tensor, scale: Scale, arith: Arith, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, Scale]:
        """LayerNorm over the last dim of integers ``x`` (scale: scalar, or per channel for ``ptf``),
        with the float affine ``weight``/``bias`` folded into a per-channel output scale."""


_KERNELS: dict[tuple[str, str], type[IntKernel]] = {}


def register_kernel(cls: type[IntKernel]) -> type[IntKernel]:
    """Class decorator: make ``cls`` available as ``make_kernel(cls.family, cls.op)``."""
    if cls.op not in OPS or cls.family not in FAMILIES:
        raise ValueError(f"kernel {cls.__name__}: unknown op {cls.op!r} or family {cls.family!r}")
    _KERNELS[(cls.family, cls.op)] = cls
    return cls


def make_kernel(family: str, op: str, **options: int) -> IntKernel:
    """The ``family`` kernel for ``op`` (e.g. ``make_kernel("ivit", "softmax", out_bits=8)``)."""
    _load_families()
    if (family, op) not in _KERNELS:
        have = ", ".join(f for f, o in sorted(_KERNELS) if o == op)
        raise ConfigError(f"no {family!r} kernel for {op}; available: {have}")
    return _KERNELS[(family, op)](**options)


def kernel_choices(op: str) -> list[str]:
    """Families that implement ``op``."""
    _load_families()
    return [f for f in FAMILIES if (f, op) in _KERNELS]


def _load_families() -> None:
    import vitquant.kernels.ibert  # noqa: F401  (registers)
    import vitquant.kernels.fqvit  # noqa: F401
    import vitquant.kernels.ivit  # noqa: F401
