"""Softmax, GELU and LayerNorm as replaceable kernel modules with explicit integer inputs.

Each module runs its exact float op until it is given kernels (:meth:`QuantNonLinear.set_kernels`,
from the QConfig's non-linear part). A kernel sits in a :class:`KernelSlot` with the quantization
point in front of it; the module runs the *active* slot:

    x̂ = Q_in(x),   (x_int, S) = integer view of x̂,   (y_int, S_y) = kernel(x_int, S),   y = y_int · S_y

with the kernel's float64 simulation (:data:`vitquant.kernels.arith.FLOAT`), equal bit for bit to its
integer implementation. Several slots exist only for ``mixed`` layers, where every candidate family is
calibrated and the sensitivity pass (:mod:`vitquant.nonlinear.mixed`) picks the active one.

A softmax kernel has no input point: the attention hands it the exact integer product of q@kᵀ
(:meth:`~vitquant.nn.matmul.QuantMatMul.integer_product`, scale ``S_q·S_k``, any bias rounded onto that
grid) as an :class:`~vitquant.nn.int_tensor.IntTensor`, as I-ViT does; the kernel reduces it
(:func:`~vitquant.kernels.base.reduce_logits`), head by head when the scale is per head.

Like a Linear, a kernel module is a calibration *consumer*: its input points are fitted in network
order (``input_points``; all slots read the same operand, ``point_operands``).

**Gradients** (quantization-aware training with the kernels in the loop, the Mixed Non-linear paper's
QAT): a kernel's output has no gradient of its own (integer rounding throughout), so wherever a
gradient is wanted the module passes it straight through the exact float op on the same input:

    y = k(x) + (f(x) - f(x).detach())        forward: k(x) bit for bit;  ∂y/∂x = f'(x)

(:func:`straight_through`). For a softmax kernel the float op's input is the fake-quantized logits
Q(q)·Q(kᵀ) + bias (``surrogate``), equal to the integer product up to the bias's rounding, so the
gradient reaches q and k through their quantizers' own straight-through rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.kernels.arith import FLOAT
from vitquant.kernels.base import IntKernel, tabulated
from vitquant.nn.int_tensor import IntTensor
from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.quantizers.spec import QuantSpec

if TYPE_CHECKING:
    from vitquant.integer.exact import ExactStep

GELU_INPUT = "gelu_input"
LAYERNORM_INPUT = "layernorm_input"
KERNEL_INPUT_ROLES = (GELU_INPUT, LAYERNORM_INPUT)  # softmax kernels take integers: no point
#: how the active kernels run while a model trains (:class:`~vitquant.reconstruction.block.TrainableBlock`):
#: ``float`` the exact float ops instead (kernels off), ``ste`` the kernels with a straight-through gradient
TRAIN_KERNELS = ("float", "ste")


def straight_through(kernel_out: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``kernel_out`` in the forward (bit for bit: ``exact - exact.detach()`` is exactly 0 for finite
    values), the gradient of ``exact`` (the float op on the same input) in the backward."""
    return kernel_out.detach() + (exact - exact.detach())


def _wants_grad(x: torch.Tensor | None) -> bool:
    return x is not None and torch.is_grad_enabled() and x.requires_grad


class KernelSlot(nn.Module):
    """One candidate kernel and the quantization point that makes its integer input (``None`` when
    the input arrives as integers, :class:`IntTensor`)."""

    def __init__(self, kernel: IntKernel, role: str, spec: QuantSpec | None) -> None:
        super().__init__()
        self.kernel = kernel
        self.input_quant: QuantPoint | None = None
        if spec is not None:
            self.input_quant = QuantPoint(role, channel_dim=-1)
            self.input_quant.spec = spec

    def extra_repr(self) -> str:
        return f"kernel={self.kernel.name}"


class QuantNonLinear:
    """Mixin: kernel slots, the active one, and the consumer protocol for calibration."""

    op: ClassVar[str] = ""
    role: ClassVar[str] = ""
    slots: nn.ModuleDict
    active: str | None
    layer_name: str
    exact: ExactStep | None = None  # the exact simulation's step (vitquant.integer.exact), when switched on

    def _init_slots(self) -> None:
        self.slots = nn.ModuleDict()
        self.active = None
        self.layer_name = ""

    def set_kernels(self, kernels: dict[str, IntKernel], spec_for: dict[str, QuantSpec | None]) -> None:
        """One slot per family (``{}``: the float op); the first becomes active. A family whose spec is
        ``None`` takes integer inputs (:class:`IntTensor`) and has no input point."""
        self.slots = nn.ModuleDict({f: KernelSlot(k, self.role, spec_for[f]) for f, k in kernels.items()})
        self.active = next(iter(kernels), None)

    def activate(self, family: str | None) -> None:
        """Run ``family``'s kernel (``None``: the float op)."""
        if family is not None and family not in self.slots:
            raise KeyError(f"{self.layer_name}: no {family!r} kernel prepared (have {list(self.slots)})")
        self.active = family

    @property
    def takes_integers(self) -> bool:
        """Whether the active kernel wants its input as integers (:class:`IntTensor`)."""
        return self.active is not None and self.slots[self.active].input_quant is None

    def input_points(self) -> list[QuantPoint]:
        return [slot.input_quant for slot in self.slots.values() if slot.input_quant is not None]

    def point_operands(self) -> list[int]:
        return [0] * len(self.input_points())

    def consume(self, operands: list[torch.Tensor]) -> torch.Tensor:
        """The float op on an already-quantized input (metric searches; kernel inputs use data-only fits)."""
        return self.float_forward(operands[0])

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kernel_args(self) -> tuple:
        return ()

    def forward(self, x: torch.Tensor | IntTensor, surrogate: torch.Tensor | None = None) -> torch.Tensor:
        """The active kernel on ``x`` (integers as they are, or a float tensor through the slot's input
        point); the float op when no kernel is active or its point is not fitted yet. With gradients
        wanted, the kernel's output carries the float op's gradient (:func:`straight_through`) on
        ``surrogate`` (integer input: the same values as floats, with their gradient) or on ``x``. In the exact simulation: the program's requantization onto the point, then its
        kernel op."""
        if self.exact is not None:
            return self.exact(x)
        slot = self.slots[self.active] if self.active is not None else None
        if isinstance(x, IntTensor):
            if slot is None or slot.input_quant is not None:
                raise RuntimeError(f"{self.layer_name}: integer input but the active kernel takes floats")
            with torch.no_grad():
                y = self.run_kernel(slot.kernel, x).to(torch.float32)
            return straight_through(y, self.float_forward(surrogate)) if _wants_grad(surrogate) else y
        if slot is None or slot.input_quant is None or slot.input_quant.mode is Mode.FLOAT:
            return self.float_forward(x)
        with torch.no_grad():
            y = self._kernel_on_floats(slot, x)
        return straight_through(y, self.float_forward(x)) if _wants_grad(x) else y

    def _kernel_on_floats(self, slot: KernelSlot, x: torch.Tensor) -> torch.Tensor:
        point = slot.input_quant
        ints, scale = point.quantizer.integer_view(point(x))  # type: ignore[union-attr]
        if slot.kernel.elementwise and scale.numel() == 1:
            y, y_scale = _tabulated(slot.kernel, ints, scale, point.quantizer)
            return (y * y_scale).to(x.dtype)
        return self.run_kernel(slot.kernel, IntTensor(ints, scale)).to(x.dtype)

    def run_kernel(self, kernel: IntKernel, x: IntTensor) -> torch.Tensor:
        """``kernel`` (float64 simulation) on ``x``; the dequantized float64 output."""
        y, y_scale = kernel(x.ints, x.scale, FLOAT, *self.kernel_args())
        return y * y_scale


def _tabulated(kernel: IntKernel, ints: torch.Tensor, scale: torch.Tensor, quantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """An elementwise kernel tabulated over every integer the input point can emit (at most 2^b)."""
    return tabulated(kernel, ints, scale, FLOAT, int(quantizer.code_min), int(quantizer.code_max))


class QuantSoftmax(QuantNonLinear, nn.Module):
    """Softmax over the last dim (the attention map)."""

    op = "softmax"
    role = ""  # no input point: the attention hands its kernels the integer q@kᵀ product

    def __init__(self) -> None:
        super().__init__()
        self._init_slots()

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=-1)


class QuantGELU(QuantNonLinear, nn.GELU):
    """``nn.GELU`` (exact erf form in float)."""

    op = "gelu"
    role = GELU_INPUT

    @classmethod
    def from_float(cls, act: nn.GELU) -> QuantGELU:
        new = cls(approximate=act.approximate)
        new._init_slots()
        return new

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


class QuantLayerNorm(QuantNonLinear, nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim; shares the original's affine parameters (which the
    RepQ-ViT reparameterization may rewrite: kernels read them at every call)."""

    op = "layernorm"
    role = LAYERNORM_INPUT

    @classmethod
    def from_float(cls, norm: nn.LayerNorm) -> QuantLayerNorm:
        new = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                  bias=norm.bias is not None, device="meta")
        new.weight, new.bias = norm.weight, norm.bias
        new._init_slots()
        return new

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def kernel_args(self) -> tuple:
        c = self.normalized_shape[-1]
        weight = self.weight.detach().double() if self.weight is not None else torch.ones(c, dtype=torch.float64)
        bias = self.bias.detach().double() if self.bias is not None else torch.zeros(c, dtype=torch.float64)
        return weight, bias
