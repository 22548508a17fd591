"""Rotating a timm ViT's residual stream in place, the model's function unchanged (GLF-Q 2026; QuaRot).

With an orthogonal ``Q`` that keeps the all-ones direction (:func:`~vitquant.rotation.hadamard.rotation`):

1. **centre the writers**: every module that writes the residual stream (the patch embedding, the class,
   distillation and position embeddings, each block's ``attn.proj`` and ``mlp.fc2``, LayerScale folded
   into them first) has its output's mean over the channels removed: ``W ← (I − 11ᵀ/d)·W``. LayerNorm
   subtracts that mean anyway, so the function is unchanged and every token of the stream now has zero
   mean;
2. **fold the LayerNorms' affine** into the Linears that read them: ``W_r ← W_r·diag(γ)``,
   ``b_r ← b_r + W_r·β`` (qkv after norm1, fc1 after norm2, the head after the final norm); γ = 1, β = 0;
3. **rotate**: writers ``W_w ← Qᵀ·W_w``, ``b_w ← Qᵀ·b_w`` and the embeddings ``e ← e·Q``; readers
   ``W_r ← W_r·Q``. A zero-mean token stays zero-mean (``Q·1 = 1``) and keeps its norm, so each
   LayerNorm, now plain normalisation, gives the rotated normalised token.

The residual stream's outlier channels are spread over all channels, and so are the readers' weight
columns that meet them. Supported: class-token and average-pooled ViT/DeiT (distilled too) without
register tokens or a pre-norm, with a Linear head; anything else is a one-line error.
"""

from __future__ import annotations

import torch
from torch import nn

from vitquant.errors import ConfigError


def _check(model: nn.Module) -> None:
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"residual rotation supports timm VisionTransformer (ViT, DeiT) models, got {type(model).__name__}")
    if getattr(model, "reg_token", None) is not None or not isinstance(model.norm_pre, nn.Identity):
        raise ConfigError("residual rotation supports ViTs without register tokens or a pre-norm")
    if not isinstance(model.patch_embed.norm, nn.Identity):
        raise ConfigError("residual rotation needs a patch embedding without a norm")
    for i, block in enumerate(model.blocks):
        if not isinstance(block, Block) or not isinstance(block.norm1, nn.LayerNorm) or not isinstance(block.norm2, nn.LayerNorm):
            raise ConfigError(f"residual rotation: block {i} is not timm's pre-norm Block with LayerNorms")
        if not isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity):
            raise ConfigError(f"residual rotation: block {i} normalises its attention output")
        if not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
            raise ConfigError(f"residual rotation: block {i} normalises its MLP hidden layer")
    if model.global_pool not in ("token", "avg") or getattr(model, "attn_pool", None) is not None:
        raise ConfigError(f"residual rotation supports class-token or average pooling, not {model.global_pool!r} "
                          "(a per-channel max or an attention pool does not commute with the rotation)")
    if not isinstance(model.head, nn.Linear):
        raise ConfigError("residual rotation needs a Linear classifier head (the model has none)")
    norms = [m for m in (model.norm, model.fc_norm) if not isinstance(m, nn.Identity)]
    if len(norms) != 1 or not isinstance(norms[0], nn.LayerNorm):
        raise ConfigError("residual rotation needs exactly one LayerNorm before the head")


def _fold_layer_scale(block: nn.Module, name: str, writer: nn.Linear) -> None:
    """LayerScale ``y·g`` (``block.<name>``) folded into the Linear that writes ``y``; it becomes an Identity."""
    ls = getattr(block, name)
    if isinstance(ls, nn.Identity):
        return
    g = ls.gamma.detach().double()
    writer.weight.copy_(writer.weight.double() * g.unsqueeze(1))
    if writer.bias is not None:
        writer.bias.copy_(writer.bias.double() * g)
    setattr(block, name, nn.Identity())


def _write(weight: torch.Tensor, bias: torch.Tensor | None, q: torch.Tensor) -> None:
    """A writer (output rows = the stream's channels): centred over the output channels, rotated."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    w = q.T @ (w - w.mean(dim=0, keepdim=True))
    weight.copy_(w.reshape(weight.shape))
    if bias is not None:
        b = bias.detach().double()
        bias.copy_(q.T @ (b - b.mean()))


def _embed(param: torch.Tensor, q: torch.Tensor) -> None:
    e = param.detach().double()
    param.copy_((e - e.mean(dim=-1, keepdim=True)) @ q)


def _read(norm: nn.LayerNorm, reader: nn.Linear, q: torch.Tensor) -> None:
    """A reader after ``norm``: the norm's affine folded into it, then rotated; the norm becomes plain."""
    w = reader.weight.detach().double()
    ones = torch.ones(w.shape[1], dtype=torch.float64, device=w.device)
    gamma = norm.weight.detach().double() if norm.weight is not None else ones
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(ones)
    bias = w @ beta + (reader.bias.detach().double() if reader.bias is not None else 0.0)
    reader.weight.copy_((w * gamma.unsqueeze(0)) @ q)
    if reader.bias is None:
        reader.bias = nn.Parameter(bias.to(reader.weight.dtype))
    else:
        reader.bias.copy_(bias)


def _plain(norm: nn.LayerNorm) -> None:
    if norm.weight is not None:
        norm.weight.fill_(1.0)
    if norm.bias is not None:
        norm.bias.zero_()


def rotate_vit(model: nn.Module, q: torch.Tensor) -> nn.Module:
    """Rotate ``model``'s residual stream by ``q`` in place (module docstring); returns ``model``."""
    _check(model)
    d = model.embed_dim
    if q.shape != (d, d):
        raise ConfigError(f"a rotation of the {d}-channel residual stream needs a {d}x{d} matrix, got {tuple(q.shape)}")
    q = q.to(model.patch_embed.proj.weight.device, torch.float64)
    with torch.no_grad():
        _write(model.patch_embed.proj.weight, model.patch_embed.proj.bias, q)
        for name in ("cls_token", "dist_token", "pos_embed"):
            if getattr(model, name, None) is not None:
                _embed(getattr(model, name), q)
        for block in model.blocks:
            _fold_layer_scale(block, "ls1", block.attn.proj)
            _fold_layer_scale(block, "ls2", block.mlp.fc2)
            _write(block.attn.proj.weight, block.attn.proj.bias, q)
            _write(block.mlp.fc2.weight, block.mlp.fc2.bias, q)
            _read(block.norm1, block.attn.qkv, q)
            _read(block.norm2, block.mlp.fc1, q)
            _plain(block.norm1)
            _plain(block.norm2)
        norm = model.norm if not isinstance(model.norm, nn.Identity) else model.fc_norm
        for head in (model.head, getattr(model, "head_dist", None)):
            if isinstance(head, nn.Linear):
                _read(norm, head, q)
        _plain(norm)
    return model
