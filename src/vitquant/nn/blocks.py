"""timm transformer blocks whose residual adds are explicit modules (:class:`QuantResidualAdd`).

timm writes ``x = x + branch(x)`` inline; these subclasses compute the same thing through
``add_attn`` and ``add_mlp``, which stay float adds unless the configuration makes them integer
(:mod:`vitquant.nn.residual`). With float adds the output equals timm's bit for bit.

A block may also carry a linear **compensation** of its quantization error (QwT,
:mod:`vitquant.compensation`): ``out = add_comp(out, compensation(x))`` with ``x`` the block's input,
a quantized Linear and one more residual add. It is None until a compensation is fitted, and it is
left out while the model runs in float mode (the full-precision function).
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block

from vitquant.nn.adopt import adopt
from vitquant.nn.quant_point import Mode
from vitquant.nn.residual import QuantResidualAdd


class _ResidualAdds:
    add_attn: QuantResidualAdd
    add_mlp: QuantResidualAdd
    compensation: torch.nn.Module | None  # a QuantLinear on the block's input (QwT), or None
    add_comp: QuantResidualAdd | None

    @classmethod
    def from_float(cls, block):
        new = adopt(cls, block)
        new.add_attn = QuantResidualAdd()
        new.add_mlp = QuantResidualAdd()
        new.compensation = None
        new.add_comp = None
        return new

    def compensate(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out``, plus the compensation of the block's input ``x`` when there is one (not in float mode)."""
        comp = getattr(self, "compensation", None)
        if comp is None or comp.mode is Mode.FLOAT:
            return out
        assert self.add_comp is not None
        return self.add_comp(out, comp(x))


class QuantViTBlock(_ResidualAdds, Block):
    """timm ``Block`` (ViT, DeiT) with explicit residual adds."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        y = self.add_attn(x, self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))))
        return self.compensate(x, self.add_mlp(y, self.drop_path2(self.ls2(self.mlp(self.norm2(y))))))


class QuantSwinBlock(_ResidualAdds, SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with explicit residual adds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = self.add_attn(x, self.drop_path1(self._attn(self.norm1(x))))
        y = y.reshape(B, -1, C)
        y = self.add_mlp(y, self.drop_path2(self.mlp(self.norm2(y))))
        return self.compensate(x.reshape(B, -1, C), y).reshape(B, H, W, C)
