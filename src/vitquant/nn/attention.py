"""timm attention modules rewritten so that both matmuls are explicit quantization points.

timm's fused ``scaled_dot_product_attention`` would hide q @ kᵀ and attn @ v; these subclasses always
run the explicit path:

    attn = softmax(Q(q·scale) @ Q(kᵀ) + bias/mask),   out = Q_softmax(attn) @ Q(v)

with ``softmax`` a :class:`~vitquant.nn.nonlinear.QuantSoftmax` (the float op unless given a kernel).
An integer softmax kernel instead receives the exact integer product of the quantized q and kᵀ
(:meth:`~vitquant.nn.matmul.QuantMatMul.integer_product`) with the bias and mask rounded onto its grid;
while training it also receives the float logits Q(q)·Q(kᵀ) + bias, whose float softmax gives the
kernel's output its gradient (:func:`~vitquant.nn.nonlinear.straight_through`), down to q and k.

Both matmuls are :class:`~vitquant.nn.matmul.QuantMatMul` modules (``qk`` and ``av``), so calibration
can treat them like any other consumer of quantized inputs.

``q_rectify`` and ``k_rectify`` (``None`` unless set) transform q and k, per head, before they are scaled
and quantized: quantization-aware training puts Q-ViT's Information Rectification Module there
(:mod:`vitquant.qat.irm`) and folds it into ``qkv`` afterwards.

``q`` is scaled before its quantizer, exactly as timm's non-fused path, so that with quantization off
the logits equal the original model's. The scale is a constant factor, so this only rescales the
fitted step of the q quantizer compared with RepQ-ViT (which scales after the matmul).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from timm.layers.attention import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitquant import qconfig
from vitquant.nn.adopt import adopt
from vitquant.nn.matmul import QuantMatMul
from vitquant.nn.nonlinear import QuantSoftmax


class AttentionPoints:
    """The two quantized matmuls of one attention, ``qk`` (q, kᵀ) and ``av`` (softmax output, v), and
    the replaceable ``softmax`` between them."""

    qk: QuantMatMul
    av: QuantMatMul
    softmax: QuantSoftmax
    q_rectify: nn.Module | None
    k_rectify: nn.Module | None

    def _add_points(self) -> None:
        self.qk = QuantMatMul(qconfig.MATMUL_INPUT, qconfig.MATMUL_INPUT)
        self.softmax = QuantSoftmax()
        self.av = QuantMatMul(qconfig.POST_SOFTMAX, qconfig.MATMUL_INPUT)
        self.q_rectify = None  # q, k [B, heads, N, head_dim] -> same (see the module docstring)
        self.k_rectify = None

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        add_bias: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.q_rectify is not None:
            q = self.q_rectify(q)
        if self.k_rectify is not None:
            k = self.k_rectify(k)
        q, kt = q * self.scale, k.transpose(-2, -1)  # type: ignore[attr-defined]
        products = self.qk.products(q, kt) if self.softmax.takes_integers else None
        if products is not None:  # integer softmax: the exact q@kᵀ integers, the bias on their grid
            product, logits = products  # logits: the float product, only when a gradient is wanted
            if add_bias is not None:
                product = product + add_bias(torch.zeros(product.ints.shape, dtype=q.dtype, device=q.device))
                logits = None if logits is None else add_bias(logits)
            attn = self.softmax(product, logits)  # straight-through the float softmax of the logits
        else:
            attn = self.qk(q, kt)
            if add_bias is not None:
                attn = add_bias(attn)
            attn = self.softmax(attn)
        return self.av(self.attn_drop(attn), v)  # type: ignore[attr-defined]


def attentions(model: nn.Module) -> Iterator[tuple[str, AttentionPoints]]:
    """Every (name, attention) of a prepared model, ViT and Swin alike."""
    for name, module in model.named_modules():
        if isinstance(module, AttentionPoints):
            yield name, module


def _mask_adder(attn_mask: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """timm's mask convention: boolean True = attend, or an additive float mask."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return lambda attn: attn.masked_fill(~attn_mask, float("-inf"))
    return lambda attn: attn + attn_mask


class QuantViTAttention(AttentionPoints, Attention):
    """timm ``Attention`` (ViT, DeiT) with explicit quantizable matmuls."""

    @classmethod
    def from_float(cls, attn: Attention) -> QuantViTAttention:
        new = adopt(cls, attn)
        new._add_points()
        return new

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if is_causal:
            raise NotImplementedError("causal attention is not supported for vision transformers")
        B, N, _ = x.shape
        gate_layer = getattr(self, "gate", None)
        gate = gate_layer(x).sigmoid() if gate_layer is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = self._attend(q, k, v, _mask_adder(attn_mask))
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(AttentionPoints, WindowAttention):
    """timm Swin ``WindowAttention`` with explicit quantizable matmuls (relative bias and shift mask kept)."""

    @classmethod
    def from_float(cls, attn: WindowAttention) -> QuantWindowAttention:
        new = adopt(cls, attn)
        new._add_points()
        return new

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)

        def add_bias(attn: torch.Tensor) -> torch.Tensor:  # same order of additions as timm
            attn = attn + self._get_rel_pos_bias()
            if mask is None:
                return attn
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            return attn.view(-1, self.num_heads, N, N)

        x = self._attend(q, k, v, add_bias)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))
