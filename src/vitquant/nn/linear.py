"""Linear and Conv2d layers with a quantized input point and per-output-channel quantized weights.

The weight is fake-quantized once (:meth:`quantize_weight`) and the result cached, not at every forward.
The float weight is kept: reparameterization edits it and quantizes again. Block reconstruction
(:mod:`vitquant.reconstruction`) swaps the cached weight for a trainable source
(:meth:`set_weight_rounding`, learned rounding) while it trains, then installs the hardened result.

A Linear may receive its input shifted by a constant, ``x + c`` (AdaLog's post-GELU shift, set by
:mod:`vitquant.reparam.activation_shift`). The layer keeps ``c`` as ``input_shift`` and computes the
compensating bias ``bias - c·W·1`` from the weight it actually uses (float, the current quantized
weight, or a weight-search candidate), so the shift stays exact whenever the weight quantizer changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.qconfig import WEIGHT
from vitquant.quantizers.base import Quantizer
from vitquant.quantizers.spec import QuantSpec

if TYPE_CHECKING:
    from vitquant.integer.exact import ExactStep


class WeightQuantMixin:
    """Shared weight handling: ``weight_spec`` -> ``weight_quantizer`` -> cached ``weight_fq``."""

    weight: nn.Parameter
    weight_spec: QuantSpec | None
    weight_quantizer: Quantizer | None
    mode: Mode
    layer_name: str
    weight_role: str = WEIGHT  # the QConfig role of the weight (the adapter refines the model's ends)
    exact: ExactStep | None = None  # the exact simulation's step (vitquant.integer.exact), when switched on

    def _init_weight_quant(self) -> None:
        self.weight_spec = None
        self.weight_quantizer = None
        self.register_buffer("weight_fq", None)  # type: ignore[attr-defined]
        self.weight_rounding: nn.Module | None = None  # a trainable weight source (reconstruction only)
        self.mode = Mode.FLOAT
        self.layer_name = ""
        self.input_shift = 0.0  # the input arrives as x + input_shift (see the module docstring)

    def quantize_weight(self) -> None:
        """Fit the weight quantizer per output channel and cache the fake-quantized weight."""
        if self.weight_spec is None:
            raise RuntimeError(f"layer {self.layer_name} has no weight spec")
        self.set_weight_quantizer(self.weight_spec.fit(self.weight, axis=0, where=f"{self.layer_name}.weight"))

    def set_weight_quantizer(self, quantizer: Quantizer) -> None:
        """Install a fitted weight quantizer (per output channel) and cache the fake-quantized weight."""
        with torch.no_grad():
            self.weight_quantizer = quantizer
            self.weight_fq = quantizer(self.weight.detach())

    def set_weight_rounding(self, rounding: nn.Module | None) -> None:
        """Take the quantized weight from ``rounding()`` (a trainable module, e.g.
        :class:`~vitquant.quantizers.trainable.AdaRoundWeight`) instead of the cache; None: the cache."""
        self.weight_rounding = rounding

    def consume_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's operation on input ``x`` with ``weight`` (its own, or a weight-search candidate)."""
        raise NotImplementedError

    def bias_for(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The bias to use with ``weight``: the layer's bias less ``input_shift · weight · 1``."""
        bias: torch.Tensor | None = self.bias  # type: ignore[attr-defined]
        if self.input_shift == 0.0:
            return bias
        shift = self.input_shift * weight.double().flatten(1).sum(dim=1)  # with its gradient (training)
        return (-shift if bias is None else bias.double() - shift).to(weight.dtype)

    def input_points(self) -> list[QuantPoint]:
        return [self.input_quant]  # type: ignore[attr-defined]

    def consume(self, operands: list[torch.Tensor]) -> torch.Tensor:
        """The layer on an already-quantized input (calibration searches)."""
        return self.consume_weight(operands[0], self.effective_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact is not None:  # requant onto the input codes, integer weights: the program's ops
            return self.exact(x)
        return self.consume_weight(self.input_quant(x), self.effective_weight())  # type: ignore[attr-defined]

    def effective_weight(self) -> torch.Tensor:
        if self.mode is Mode.FLOAT:
            return self.weight
        if self.weight_rounding is not None:
            return self.weight_rounding()
        if self.weight_fq is None:
            raise RuntimeError(f"weights of layer {self.layer_name} are not quantized")
        return self.weight_fq


class QuantLinear(WeightQuantMixin, nn.Linear):
    """``nn.Linear`` with ``input_quant`` (a :class:`QuantPoint`) and quantized weights."""

    out_channel_axis = -1  # the output axis of the weight's rows

    @classmethod
    def from_float(cls, linear: nn.Linear, input_role: str, weight_role: str = WEIGHT) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight_role = weight_role
        new.weight = linear.weight
        new.bias = linear.bias
        new._init_weight_quant()
        new.input_quant = QuantPoint(input_role, channel_dim=-1)
        return new

    def consume_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias_for(weight))

    def extra_repr(self) -> str:
        shift = f", input_shift={self.input_shift}" if self.input_shift else ""
        return super().extra_repr() + shift


class QuantConv2d(WeightQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (the patch embedding) with a per-tensor input point and quantized weights."""

    out_channel_axis = 1

    @classmethod
    def from_float(cls, conv: nn.Conv2d, input_role: str, weight_role: str = WEIGHT) -> QuantConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.weight_role = weight_role
        new._init_weight_quant()
        new.input_quant = QuantPoint(input_role, channel_dim=1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact is None:
            return super().forward(x)
        y = self.exact(x)  # the program's patches @ weightᵀ: [B, N, C] -> the convolution's [B, C, H/p, W/p]
        p = self.kernel_size
        return y.transpose(1, 2).reshape(x.shape[0], -1, x.shape[-2] // p[0], x.shape[-1] // p[1])

    def consume_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.input_shift:  # zero padding would not be shifted: the fold is defined for Linear only
            raise RuntimeError(f"layer {self.layer_name}: an input shift is not supported on a convolution")
        return self._conv_forward(x, weight, self.bias)
