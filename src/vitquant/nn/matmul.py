"""An explicit activation-activation matmul with a quantization point on each operand.

``QuantMatMul(a, b) = Q_a(a) @ Q_b(b)``: q @ kᵀ and attn @ v in the attention rewrites. Like
:class:`~vitquant.nn.linear.QuantLinear` it is a *consumer*: the calibration pipeline reads its
operands (``input_points``) and recomputes its output for candidate quantizers (``consume``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.nn.int_tensor import IntTensor
from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.quantizers.trainable import LSQActivation
from vitquant.quantizers.uniform import UniformQuantizer

if TYPE_CHECKING:
    from vitquant.integer.exact import ExactStep


class QuantMatMul(nn.Module):
    """``a @ b`` with quantization points ``a_quant`` and ``b_quant``.

    Operands are ``[..., heads, rows, cols]``: ``head_dim=1``; ``a`` has its channels (the contracted
    axis) last, ``b`` on axis -2. In the exact simulation (``exact``, see :mod:`vitquant.integer.exact`)
    both operands arrive as the codes their producers emitted and the product is the program's op.
    """

    exact: ExactStep | None = None

    def __init__(self, a_role: str, b_role: str) -> None:
        super().__init__()
        self.a_quant = QuantPoint(a_role, channel_dim=-1, head_dim=1)
        self.b_quant = QuantPoint(b_role, channel_dim=-2, head_dim=1)

    def input_points(self) -> list[QuantPoint]:
        return [self.a_quant, self.b_quant]

    @staticmethod
    def consume(operands: list[torch.Tensor]) -> torch.Tensor:
        return operands[0] @ operands[1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.exact is not None:
            return self.exact(a, b)
        return self.a_quant(a) @ self.b_quant(b)

    def integer_product(self, a: torch.Tensor, b: torch.Tensor) -> IntTensor | None:
        """The same product as integers and their scale, ``(a_int @ b_int, S_a · S_b)``, computed
        exactly in float64 (|a_int|, |b_int| <= 2^9 and at most 2^34 terms stay below 2^53), or
        ``None`` while either point is float (calibration). Both points must quantize with one
        uniform step along the contracted axis (per tensor or per head), else :class:`ConfigError`."""
        products = self.products(a, b)
        return None if products is None else products[0]

    def products(self, a: torch.Tensor, b: torch.Tensor) -> tuple[IntTensor, torch.Tensor | None] | None:
        """The integer product (:meth:`integer_product`) and, when a gradient is wanted, the float
        product ``Q_a(a) @ Q_b(b)`` of the same quantized operands, with its gradient (the straight-through
        surrogate of an integer softmax while training); ``None`` while either point is float. In the exact
        simulation: the program's q @ kᵀ (no surrogate).

        This is a use of the operands as ``forward`` is, so the module's forward pre-hooks see it first:
        calibration's one-forward engine fits the points there before an integer softmax reads them."""
        for hook_id, hook in list(self._forward_pre_hooks.items()):
            if hook_id in self._forward_pre_hooks_with_kwargs:  # registered with_kwargs: (args, kwargs) in and out
                replaced = hook(self, (a, b), {})
                if replaced is not None:
                    (a, b), _ = replaced
            else:
                replaced = hook(self, (a, b))
                if replaced is not None:
                    a, b = replaced
        if self.exact is not None:  # the program's q @ kᵀ reads k: hand it the untransposed operand
            step = self.exact
            return IntTensor(step.run(*step.integers(a, b.transpose(-2, -1))), step.output_scale), None
        if self.a_quant.mode is Mode.FLOAT or self.b_quant.mode is Mode.FLOAT:
            return None
        a_hat, b_hat = self.a_quant(a), self.b_quant(b)
        with torch.no_grad():
            a_int, a_scale = _integer_operand(self.a_quant, a_hat, contracted=-1)
            b_int, b_scale = _integer_operand(self.b_quant, b_hat, contracted=-2)
            product = IntTensor(a_int @ b_int, a_scale * b_scale)
        wanted = torch.is_grad_enabled() and (a_hat.requires_grad or b_hat.requires_grad)
        return product, (a_hat @ b_hat if wanted else None)


def _integer_operand(point: QuantPoint, x_hat: torch.Tensor, contracted: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers, step) of the quantized operand ``x_hat``: a fitted uniform quantizer, or its trainable
    LSQ stand-in while training (the same grid, the step detached)."""
    quantizer = point.quantizer
    scale = getattr(quantizer, "scale", None)
    if not isinstance(quantizer, (UniformQuantizer, LSQActivation)) or (scale.dim() >= -contracted and scale.shape[contracted] != 1):
        raise ConfigError(
            f"{point.point_name or point.role}: an integer softmax takes the integer product of q@kᵀ, which "
            f"needs q and k quantized uniformly with one step per tensor or per head (got {quantizer!r})"
        )
    return quantizer.integer_view(x_hat)
