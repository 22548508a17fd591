"""Integer kernels for the non-linear operators of a ViT, registered by (family, op).

A kernel receives integers and their scale and returns integers and a scale:

    y_int, y_scale = kernel(x_int, x_scale, arith)       (x ≈ x_int · x_scale, y ≈ y_int · y_scale)
    prepared = kernel.prepare(x_scale, arith);  y_int = prepared(x_int)     (the same, in two steps)

written once against :class:`~vitquant.kernels.arith.Arith`, so the same code runs on ``int64``
tensors (the integer implementation) and on ``float64`` tensors (its float simulation, used by the
fake-quantized model); the two are equal bit for bit (tests). Integer constants a kernel derives from
the input scale (``floor(1/S)``, polynomial coefficients over S, ...) are computed once per call in
Python from the scale, as a converter would store them: :meth:`prepare` derives them once and returns a
:class:`PreparedKernel`, whose ``apply`` is tensor operations only (no checks, no Python branch on a
value), so an executor can run or compile it for a whole program; calling the kernel prepares, checks
the input and applies.

``op`` is one of :data:`OPS`; ``family`` one of the published methods (``ivit``, ``ibert``,
``fqvit``). :func:`make_kernel` builds one by name; :func:`kernel_choices` lists what exists per op
(FQ-ViT has no GELU kernel, so ``mixed`` chooses between two there).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
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


def any_shape(shape: tuple[int, ...]) -> None:
    """The shape check of a kernel that takes any shape."""


def rows_within(name: str, max_row: int | None = None) -> Callable[[tuple[int, ...]], None]:
    """The shape check of a kernel over the last dim: non-empty, at most ``max_row`` long."""

    def check(shape: tuple[int, ...]) -> None:
        if len(shape) == 0 or shape[-1] == 0:
            raise ConfigError(f"{name}: needs a non-empty last dimension, got shape {shape}")
        if max_row is not None and shape[-1] > max_row:
            raise ConfigError(f"{name}: rows of at most {max_row} elements, got {shape[-1]}")

    return check


@dataclass(frozen=True)
class PreparedKernel:
    """A kernel with its integer constants derived from one input scale (see the module docstring).

    ``apply(x)`` computes the output integers with tensor operations only; it assumes what
    :meth:`check` verifies: the shape, and integers ``|x| < input_limit`` (the range the kernel's bounds
    are derived for). ``scale`` is the output scale, ``bound`` a bound on ``|output|``.
    """

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    scale: Scale
    bound: int
    input_limit: int
    check_shape: Callable[[tuple[int, ...]], None] = any_shape

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`ConfigError` unless ``apply`` accepts ``x`` (its shape, then ``|x| < input_limit``)."""
        self.check_shape(tuple(x.shape))
        if x.numel() and x.abs().amax().item() >= self.input_limit:
            bits = self.input_limit.bit_length() - 1
            raise ConfigError(f"{self.name}: input integers must satisfy |x| < 2^{bits} (got {x.abs().amax().item():.0f})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.apply(x)


#: logits more than T = 32·ln 2 below the row maximum weigh e^-T = 2^-32: under one step of any output
LOGIT_RANGE = 32 * math.log(2)
#: after :func:`reduce_logits`, softmax kernels see integers in [-2^15, 0]
REDUCED_RANGE = 2**15
#: softmax inputs may be as wide as an accumulated q@kᵀ product (|x| < 2^40)
SOFTMAX_INPUT_LIMIT = 2**40


@dataclass(frozen=True)
class LogitReduction:
    """The constants of :func:`reduce_logits` for one input scale: the clamp D, the shift r and the
    reduced scale S·2^r."""

    clamp: int
    shift: int
    scale: float

    @classmethod
    def of(cls, scale: float) -> LogitReduction:
        if not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"softmax: input scale must be finite and positive, got {scale}")
        d = math.ceil(LOGIT_RANGE / scale)
        if d >= SOFTMAX_INPUT_LIMIT:
            raise ConfigError(f"softmax: input scale {scale:g} too small (the logit range needs more than 40 bits)")
        shift = max(0, (d - 1).bit_length() - 15)
        return cls(d, shift, scale * 2.0**shift)

    def apply(self, x: torch.Tensor, arith: Arith) -> torch.Tensor:
        """``round(max(x - max_row(x), -D) / 2^r)`` (ties up), in ``[-2^15, 0]``, for ``|x| < 2^40``."""
        delta = torch.clamp(x - torch.amax(x, dim=-1, keepdim=True), min=-self.clamp)
        return arith.round_shift(delta, self.shift)


def reduce_logits(x: torch.Tensor, scale: float, arith: Arith) -> tuple[torch.Tensor, float]:
    """The part of a softmax input that matters, on at most 16 bits:

        Δ = max(x - max_row(x), -D),  D = ⌈T/S⌉;   Δ' = round(Δ / 2^r),  scale S·2^r

    with r >= 0 the smallest shift giving ``⌈D/2^r⌉ <= 2^15`` (rounding ties up). Logits below the clamp
    have e^(SΔ) < 2^-32. For S >= T/2^15 ≈ 6.8e-4 (every 8-bit requantized input) r = 0 and only far
    logits are clamped; a wide input (the integer product of q@kᵀ with S = S_q·S_k) is shifted onto a
    grid of at most T/2^15 in logit units (e^(T/2^16) - 1 < 0.04 % relative error on each weight).
    Integers only: a row max, a subtraction, a clamp and a rounding shift (|x| < 2^40).
    """
    reduction = LogitReduction.of(scale)
    x = arith.tensor(x)
    rows_within("softmax")(tuple(x.shape))
    if x.numel() and x.abs().amax().item() >= SOFTMAX_INPUT_LIMIT:
        raise ConfigError(f"softmax: input integers must satisfy |x| < 2^40 (got {x.abs().amax().item():.0f})")
    return reduction.apply(x, arith), reduction.scale


class SoftmaxKernel(IntKernel):
    """Softmax over the last dim. The input is reduced first (:func:`reduce_logits`: any integers with
    |x| < 2^40, e.g. the q@kᵀ product), then the family's softmax runs on Δ ∈ [-2^15, 0]
    (:meth:`prepare_reduced`)."""

    op = "softmax"
    input_format: ClassVar[str] = "product"  # the integer q@kᵀ product, no input point of its own

    def __call__(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """Softmax over the last dim of integers ``x`` with one ``scale``, or one per head for attention
        logits ``[B, H, N, N]`` (``[H]``, or a scale broadcasting to ``[1, H, 1, 1]``: each head runs with
        its own)."""
        prepared = self.prepare(scale, arith)
        return prepared(arith.tensor(x)), prepared.scale

    def prepare(self, scale: Scale, arith: Arith) -> PreparedKernel:
        """The softmax of integers ``|x| < 2^40`` with input ``scale`` (one, or one per head)."""
        t = torch.as_tensor(scale, dtype=torch.float64)
        if t.numel() > 1:
            return self._per_head(t.reshape(-1), arith)
        reduction = LogitReduction.of(_one_scale(t, self.name))
        inner = self.prepare_reduced(torch.tensor(reduction.scale, dtype=torch.float64), arith)
        check_rows = rows_within(self.name)

        def check_shape(shape: tuple[int, ...]) -> None:
            check_rows(shape)
            inner.check_shape(shape)

        return PreparedKernel(self.name, lambda x: inner.apply(reduction.apply(x, arith)), inner.scale, inner.bound,
                              SOFTMAX_INPUT_LIMIT, check_shape)

    def _per_head(self, scales: torch.Tensor, arith: Arith) -> PreparedKernel:
        """Logits [B, H, N, N], head h with scale ``scales[h]`` (the output scale is fixed by the kernel)."""
        heads = [self.prepare(s, arith) for s in scales]

        def check_shape(shape: tuple[int, ...]) -> None:
            if len(shape) != 4 or shape[1] != len(heads):
                raise ConfigError(f"{self.name}: needs one input scale, or logits [B, {len(heads)}, N, N] for "
                                  f"{len(heads)} per-head scales; got shape {shape}")
            heads[0].check_shape(shape)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([p.apply(x[:, h]) for h, p in enumerate(heads)], dim=1)

        return PreparedKernel(self.name, apply, heads[0].scale, heads[0].bound, SOFTMAX_INPUT_LIMIT, check_shape)

    def softmax(self, delta: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """The family's softmax of reduced integers ``delta ∈ [-2^15, 0]`` (row max 0)."""
        prepared = self.prepare_reduced(scale, arith)
        return prepared(arith.tensor(delta)), prepared.scale

    @abc.abstractmethod
    def prepare_reduced(self, scale: Scale, arith: Arith) -> PreparedKernel:
        """The family's softmax of reduced integers ``delta ∈ [-2^15, 0]`` at ``scale`` (row max 0)."""


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

    def __call__(self, x: torch.Tensor, scale: Scale, arith: Arith) -> tuple[torch.Tensor, Scale]:
        """GELU of integers ``x`` with scalar ``scale``."""
        prepared = self.prepare(scale, arith)
        return prepared(arith.tensor(x)), prepared.scale

    @abc.abstractmethod
    def prepare(self, scale: Scale, arith: Arith) -> PreparedKernel:
        """GELU of integers at the scalar input ``scale``."""


class LayerNormKernel(IntKernel):
    op = "layernorm"

    def __call__(
        self, x: torch.Tensor, scale: Scale, arith: Arith, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, Scale]:
        """LayerNorm over the last dim of integers ``x`` (scale: scalar, or per channel for ``ptf``),
        with the float affine ``weight``/``bias`` folded into a per-channel output scale."""
        x = arith.tensor(x)
        prepared = self.prepare(scale, arith, weight, bias, x.shape[-1] if x.dim() else 0)
        return prepared(x), prepared.scale

    @abc.abstractmethod
    def prepare(
        self, scale: Scale, arith: Arith, weight: torch.Tensor, bias: torch.Tensor, channels: int
    ) -> PreparedKernel:
        """LayerNorm over ``channels`` channels at input ``scale``, with the affine ``weight``/``bias``."""


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
