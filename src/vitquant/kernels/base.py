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
import math
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
      tensor) or ``"ptf"`` (FQ-ViT's per-channel power-of-two factors over one scale); ``"product"``:
      no point, the integers of the preceding matmul (softmax);
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


#: logits more than T = 32·ln 2 below the row maximum weigh e^-T = 2^-32: under one step of any output
LOGIT_RANGE = 32 * math.log(2)
#: after :func:`reduce_logits`, softmax kernels see integers in [-2^15, 0]
REDUCED_RANGE = 2**15
#: softmax inputs may be as wide as an accumulated q@kᵀ product (|x| < 2^40)
SOFTMAX_INPUT_LIMIT = 2**40


def reduce_logits(x: torch.Tensor, scale: float, arith: Arith) -> tuple[torch.Tensor, float]:
    """The part of a softmax input that matters, on at most 16 bits:

        Δ = max(x - max_row(x), -D),  D = ⌈T/S⌉;   Δ' = round(Δ / 2^r),  scale S·2^r

    with r >= 0 the smallest shift giving ``⌈D/2^r⌉ <= 2^15`` (rounding ties up). Logits below the clamp
    have e^(SΔ) < 2^-32. For S >= T/2^15 ≈ 6.8e-4 (every 8-bit requantized input) r = 0 and only far
    logits are clamped; a wide input (the integer product of q@kᵀ with S = S_q·S_k) is shifted onto a
    grid of at most T/2^15 in logit units (e^(T/2^16) - 1 < 0.04 % relative error on each weight).
    Integers only: a row max, a subtraction, a clamp and a rounding shift (|x| < 2^40).
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"softmax: input scale must be finite and positive, got {scale}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ConfigError(f"softmax over an empty dimension (input shape {tuple(x.shape)})")
    x = arith.tensor(x)
    if x.numel() and x.abs().amax().item() >= SOFTMAX_INPUT_LIMIT:
        raise ConfigError(f"softmax: input integers must satisfy |x| < 2^40 (got {x.abs().amax().item():.0f})")
    d = math.ceil(LOGIT_RANGE / scale)
    if d >= SOFTMAX_INPUT_LIMIT:
        raise ConfigError(f"softmax: input scale {scale:g} too small (the logit range needs more than 40 bits)")
    shift = max(0, (d - 1).bit_length() - 15)
    delta = torch.clamp(x - torch.amax(x, dim=-1, keepdim=True), min=-d)
    return arith.round_shift(delta, shift), scale * 2.0**shift


class SoftmaxKernel(IntKernel):
    """Softmax over the last dim. ``__call__`` reduces the input (:func:`reduce_logits`: any integers
    with |x| < 2^40, e.g. the q@kᵀ product) and runs the family's :meth:`softmax` on Δ ∈ [-2^15, 0]."""

    op = "softmax"
    input_format: ClassVar[str] = "product"  # the integer q@kᵀ product, no input point of its own

    def __call__(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """Softmax over the last dim of integers ``x`` with one ``scale``, or one per head for attention
        logits ``[B, H, N, N]`` (``[H]``, or a scale broadcasting to ``[1, H, 1, 1]``: each head runs with
        its own)."""
        t = torch.as_tensor(scale, dtype=torch.float64)
        if t.numel() > 1 and x.dim() == 4:
            t = t.reshape(1, -1, 1, 1) if t.dim() == 1 else t
            per_head = torch.broadcast_to(t, (1, x.shape[1], 1, 1)).reshape(-1)
            outs = [self(x[:, h], per_head[h], arith) for h in range(x.shape[1])]
            return torch.stack([y for y, _ in outs], dim=1), outs[0][1]  # the output scale is fixed
        delta, reduced = reduce_logits(x, _one_scale(t, self.name), arith)
        return self.softmax(delta, torch.tensor(reduced, dtype=torch.float64), arith)

    @abc.abstractmethod
    def softmax(self, delta: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """The family's softmax of reduced integers ``delta ∈ [-2^15, 0]`` (row max 0)."""


def _one_scale(scale: Scale | float, who: str) -> float:
    t = torch.as_tensor(scale, dtype=torch.float64)
    if t.numel() != 1:
        raise ConfigError(f"{who}: needs one input scale, got shape {tuple(t.shape)}")
    return float(t.reshape(()))


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


def tabulated(kernel: IntKernel, x: torch.Tensor, scale: Scale, arith: Arith, lo: int, hi: int) -> tuple[torch.Tensor, Scale]:
    """An elementwise kernel run once on every integer in ``[lo, hi]`` (a range holding every value of
    ``x``, e.g. the codes of its input point), then looked up: the same values as running it on ``x``,
    without its arithmetic per element."""
    domain = torch.arange(lo, hi + 1, dtype=torch.int64).to(arith.dtype)
    table, y_scale = kernel(domain, scale, arith)
    return table[(x - lo).long()], y_scale


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
