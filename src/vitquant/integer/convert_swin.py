"""Convert a calibrated Swin Transformer (timm ``SwinTransformer``) into an integer program.

The same builder, requantizations, kernels, attention and MLP as ViT (:mod:`vitquant.integer.convert`);
what Swin adds is layout and two constants:

- the patch embedding: patches times the flattened 4x4 kernel, then ``patch_embed.norm`` (an integer
  LayerNorm kernel) on tokens ``[B, H·W, C]`` in timm's NHWC order (row-major);
- per block: LayerNorm, the cyclic shift ``roll(-s)`` and ``window_partition`` (op ``roll``,
  ``window_partition``: pure indexing) into windows ``[B·nW, N, C]``; window attention as in ViT, with
  q·kᵀ per head and window an integer matmul at S_q·S_k to which the relative position bias and the
  shift mask are added on that grid, as the fake-quantized model adds them
  (:class:`~vitquant.nn.int_tensor.IntTensor`): ``round(f32(bias + mask) / (S_q·S_k))`` clamped at
  ±2^38 (op ``window_bias``, one row per window); ``window_reverse`` and ``roll(+s)`` back, then the
  integer residual add, and the MLP as in ViT;
- patch merging: the 2x2 gather (op ``patch_merge``, channels in timm's order), its LayerNorm kernel and
  the reduction Linear;
- the head: the final LayerNorm kernel, global average pooling as an integer sum over the N tokens
  (op ``sum_tokens``; the 1/N folded into the scale, S_pool = S_ln / N, so the requantization onto the
  classifier's input multiplies by m/2^s ≈ S_ln / (N·S_fc)), the classifier, logits on one output scale.

Refused with :class:`~vitquant.errors.ConfigError`: feature maps zero-padded to whole windows or to even
sizes for merging, pooling other than the average, float non-linear ops or residual adds (as for ViT).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.integer.convert import (
    Value,
    _Builder,
    _layernorm,
    _mlp_branch,
    _residual_add,
    _residual_quantizer,
    _uniform,
    attention,
    check_integer_path,
    compensated,
)
from vitquant.integer.program import IntegerProgram

MASK_CLAMP = 2**38  # a masked logit on the q·kᵀ grid, as IntTensor clamps it


def convert_swin(qmodel: nn.Module) -> IntegerProgram:
    """The integer program of a calibrated timm ``SwinTransformer`` (integer kernels and residual adds)."""
    from timm.models.swin_transformer import PatchMerging, SwinTransformer

    from vitquant.nn.blocks import QuantSwinBlock

    if not isinstance(qmodel, SwinTransformer):
        raise ConfigError(f"convert_swin converts timm SwinTransformer models, got {type(qmodel).__name__}")
    head = qmodel.head
    if getattr(head.global_pool, "pool_type", None) != "avg" or not isinstance(head.fc, nn.Linear):
        raise ConfigError("integer conversion of Swin needs an average-pooled classifier head")
    qmodel.eval()
    b = _Builder()
    check_integer_path(b, qmodel)

    # ---------------------------------------------------------------- patch embedding
    conv = qmodel.patch_embed.proj
    point = _uniform(conv.input_quant)
    if point.scale.numel() != 1:
        raise ConfigError("the patch embedding needs a per-tensor input quantizer")
    if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError("the patch embedding must be a square, non-overlapping, unpadded convolution")
    x = Value("input", point.scale.double().reshape(()), int(max(point.zero_point.abs(), point.qmax - point.zero_point)))
    x = b.emit("patchify", [x], "patch_embed", x.scale, x.bound, attrs={"patch": conv.kernel_size[0]})
    x = b.linear(x, conv, "patch_embed.proj")
    if not isinstance(qmodel.patch_embed.norm, nn.Identity):
        x = _layernorm(b, x, qmodel.patch_embed.norm, "patch_embed.norm")
    height, width = (int(s) for s in qmodel.patch_embed.grid_size)

    # ---------------------------------------------------------------- stages
    first_add = None
    for s, stage in enumerate(qmodel.layers):
        if isinstance(stage.downsample, PatchMerging):
            x, height, width = _patch_merging(b, x, stage.downsample, f"layers.{s}.downsample", height, width)
        elif not isinstance(stage.downsample, nn.Identity):
            raise ConfigError(f"layers.{s}.downsample: {type(stage.downsample).__name__} has no integer path")
        for i, block in enumerate(stage.blocks):
            hint = f"layers.{s}.blocks.{i}"
            if not isinstance(block, QuantSwinBlock):
                raise ConfigError(f"{hint}: unsupported block {type(block).__name__}")
            if first_add is None:
                first_add = block.add_attn
            x = compensated(b, x, block, hint, partial(_swin_block, b, block=block, hint=hint, height=height, width=width))

    if first_add is None:
        raise ConfigError("the Swin model has no blocks")

    # ---------------------------------------------------------------- head
    tokens = height * width
    x = _layernorm(b, x, qmodel.norm, "norm")
    x = b.emit("sum_tokens", [x], "pool", x.scale / tokens, tokens * x.bound)
    x = b.requant_to_point(x, head.fc.input_quant, None, "head.fc.in")
    acc = b.linear(x, head.fc, "head.fc")
    out_scale = float(acc.scale.min())
    limit = torch.tensor(2**40)
    b.requant(acc, torch.tensor(out_scale, dtype=torch.float64), -limit, limit, "logits", output="logits")
    return IntegerProgram(
        b.ops, b.program_tensors(), float(point.scale), int(point.zero_point), point.bits, out_scale,
        info={"model": type(qmodel).__name__, "residual_bits": _residual_quantizer(first_add, "layers.0.blocks.0").bits},
    )


def _patch_merging(b: _Builder, x: Value, merge: nn.Module, hint: str, height: int, width: int) -> tuple[Value, int, int]:
    """2x2 gather [B, H·W, C] -> [B, H/2·W/2, 4C], LayerNorm kernel, reduction Linear (its accumulator)."""
    if height % 2 or width % 2:
        raise ConfigError(f"{hint}: a {height}x{width} feature map would be zero-padded for merging; no integer path")
    scale = x.scale.reshape(-1).repeat(4) if x.scale.numel() > 1 else x.scale
    x = b.emit("patch_merge", [x], hint, scale, x.bound, attrs={"height": height, "width": width})
    x = _layernorm(b, x, merge.norm, f"{hint}.norm")
    x = b.requant_to_point(x, merge.reduction.input_quant, None, f"{hint}.reduction.in")
    return b.linear(x, merge.reduction, f"{hint}.reduction"), height // 2, width // 2


def _swin_block(b: _Builder, x: Value, block: nn.Module, hint: str, height: int, width: int) -> Value:
    """norm1, shift, windows, window attention (bias and mask on the q·kᵀ grid), windows back, unshift,
    residual add; then the MLP branch as in ViT. ``x``: tokens [B, H·W, C]."""
    wh, ww = (int(s) for s in block.window_size)
    sh, sw = (int(s) for s in block.shift_size)
    if tuple(block.input_resolution) != (height, width):
        raise ConfigError(f"{hint}: built for {tuple(block.input_resolution)}, receives {height}x{width} tokens")
    if height % wh or width % ww:
        raise ConfigError(f"{hint}: a {height}x{width} feature map is zero-padded to {wh}x{ww} windows; no integer path")
    grid = {"height": height, "width": width}
    h = _layernorm(b, x, block.norm1, f"{hint}.norm1")
    if sh or sw:
        h = b.emit("roll", [h], f"{hint}.shift", h.scale, h.bound, attrs={**grid, "shifts": [-sh, -sw]})
    h = b.emit("window_partition", [h], f"{hint}.windows", h.scale, h.bound, attrs={**grid, "window": [wh, ww]})
    mask = block.get_attn_mask(torch.zeros(1, height, width, 1)) if getattr(block, "dynamic_mask", False) else block.attn_mask
    bias = _logit_bias(block.attn, mask, hint)
    y = attention(b, h, block.attn, hint, wh * ww, bias=bias)
    y = b.emit("window_reverse", [y], f"{hint}.unwindows", y.scale, y.bound, attrs={**grid, "window": [wh, ww]})
    if sh or sw:
        y = b.emit("roll", [y], f"{hint}.unshift", y.scale, y.bound, attrs={**grid, "shifts": [sh, sw]})
    x = _residual_add(b, x, y, block.add_attn, hint + ".attn", f"{hint}.add_attn")
    return _mlp_branch(b, x, block, hint)


def logit_bias(attn: nn.Module, mask: torch.Tensor | None) -> torch.Tensor:
    """The integer bias [nW or 1, H, N, N] the fake-quantized window attention adds to its q·kᵀ integers:
    ``clamp(round(f32(B_rel + M) / (S_q·S_k)), ±2^38)`` with B_rel the relative position bias, M the
    shift mask (0 or -100; float32 sums as timm adds them), S_q·S_k per head."""
    heads = attn.num_heads
    rel = attn._get_rel_pos_bias().detach().float()  # [1, H, N, N]
    total = rel if mask is None else (rel.unsqueeze(1) + mask.float().unsqueeze(1).unsqueeze(0)).flatten(0, 1)
    steps = []
    for point in (attn.qk.a_quant, attn.qk.b_quant):
        step = _uniform(point).scale.double().reshape(-1)
        if step.numel() not in (1, heads):
            raise ConfigError(f"{point.point_name}: needs one step per tensor or per head, got {step.numel()}")
        steps.append(step.expand(heads))
    grid = (steps[0] * steps[1]).reshape(1, heads, 1, 1)
    return torch.round(total.double() / grid).clamp(-MASK_CLAMP, MASK_CLAMP).to(torch.int64)


def _logit_bias(attn: nn.Module, mask: torch.Tensor | None, hint: str):
    value = logit_bias(attn, mask)

    def add(b: _Builder, logits: Value) -> Value:
        return b.emit("window_bias", [logits], f"{hint}.attn.bias", logits.scale, logits.bound + int(value.abs().max()),
                      consts={"value": value})

    return add
