"""timm transformer blocks whose residual adds are explicit modules (:class:`QuantResidualAdd`).

timm writes ``x = x + branch(x)`` inline; these subclasses compute the same thing through
``add_attn`` and ``add_mlp``, which stay float adds unless the configuration makes them integer
(:mod:`vitquant.nn.residual`). With float adds the output equals timm's bit for bit.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block

from vitquant.nn.adopt import adopt
from vitquant.nn.residual import QuantResidualAdd


class _ResidualAdds:
    add_attn: QuantResidualAdd
    add_mlp: QuantResidualAdd

    @classmethod
    def from_float(cls, block):
        new = adopt(cls, block)
        new.add_attn = QuantResidualAdd()
        new.add_mlp = QuantResidualAdd()
        return new


class QuantViTBlock(_ResidualAdds, Block):
    """timm ``Block`` (ViT, DeiT) with explicit residual adds."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = self.add_attn(x, self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))))
        return self.add_mlp(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


class QuantSwinBlock(_ResidualAdds, SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with explicit residual adds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.add_attn(x, self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = self.add_mlp(x, self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)
