"""The op set of an integer program, each written once against an arithmetic backend.

``OPS[kind](args, consts, attrs, ctx) -> tensor``. With ``ctx.arith`` = :data:`~vitquant.kernels.arith.INT`
every value is an ``int64`` tensor and only integer operations run (matmuls through
:func:`~vitquant.kernels.gemm.int_matmul`); with :data:`~vitquant.kernels.arith.FLOAT` the same
arithmetic runs on float64 integers with floors: the simulation twin, equal bit for bit while every
value stays below 2^52 (the converter checks the bounds).

Requantization (every scale change) is dyadic: ``clamp(round(x · m / 2^s), lo, hi)`` with an integer
multiplier m and shift s per channel or head, rounding ties to even like the fake-quantized model's
``torch.round`` (attention probabilities are multiples of 2^-k and often land on ties). Non-linear ops call the
integer kernels of :mod:`vitquant.kernels`; a kernel derives its integer constants from the stored input
scale in Python, once per call, as a converter would store them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vitquant.errors import DtypeError, RangeError
from vitquant.kernels.arith import BACKENDS, Arith
from vitquant.kernels.base import make_kernel, tabulated
from vitquant.kernels.gemm import int_matmul

OpFn = Callable[[list[torch.Tensor], dict[str, torch.Tensor], dict[str, Any], "Context"], torch.Tensor]
OPS: dict[str, OpFn] = {}
REQUIRED: dict[str, tuple[str, ...]] = {}  # op kind -> constants it must be given (checked when a program loads)


class StrictModeError(DtypeError):
    """A floating-point tensor appeared inside an integer-only run."""


@dataclass(frozen=True)
class Context:
    arith: Arith
    gemm: str = "int"  # int_matmul backend for the INT arithmetic: "int" (pure) or "float" (exact, faster)


def register_op(kind: str, constants: tuple[str, ...] = ()) -> Callable[[OpFn], OpFn]:
    def wrap(fn: OpFn) -> OpFn:
        OPS[kind] = fn
        REQUIRED[kind] = constants
        return fn
    return wrap


def matmul(a: torch.Tensor, b: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Exact ``a @ b`` of integers (float64 in the simulation: every partial sum < 2^53)."""
    if ctx.arith.is_integer:
        return int_matmul(a, b, backend=ctx.gemm)
    return a @ b


def round_shift(x: torch.Tensor, shift: torch.Tensor, arith: Arith) -> torch.Tensor:
    """``round(x / 2^s)`` with ties to even (as ``torch.round`` in the fake-quantized model), elementwise
    for a broadcast tensor of shifts s >= 0: ``(x + 2^(s-1) - 1 + lsb(⌊x / 2^s⌋)) >> s`` (s = 0: x)."""
    positive = shift > 0
    bias = torch.where(positive, arith.shift_left(torch.ones_like(shift), torch.clamp(shift - 1, min=0)) - 1, 0)
    q = arith.shift_right(x, shift)
    lsb = torch.bitwise_and(q, 1) if arith.is_integer else q - 2 * arith.shift_right(q, 1)
    if not bool(positive.all()):
        lsb = torch.where(positive, lsb, torch.zeros_like(lsb))
    return arith.shift_right(x + (lsb + bias), shift)


@register_op("requant", ("multiplier", "shift", "low", "high"))
def requant(args, consts, attrs, ctx):
    """``clamp(round(x · m / 2^s), lo, hi)`` (ties to even): a new scale, and the code range of the next
    quantizer (the fast executor computes it in float64: :func:`vitquant.integer.fast.requant`)."""
    a = ctx.arith
    y = round_shift(args[0] * a.tensor(consts["multiplier"]), a.tensor(consts["shift"]), a)
    return torch.clamp(y, min=a.tensor(consts["low"]), max=a.tensor(consts["high"]))


@register_op("patchify")
def patchify(args, consts, attrs, ctx):
    """[B, C, H, W] -> [B, N, C·p·p] (row-major patches, channels then rows then columns: Conv2d's order)."""
    x = args[0]
    p = int(attrs["patch"])
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] codes in 0..15 -> uint8 [out, ⌈in/2⌉]: column 2j in the low nibble, 2j+1 in the high one."""
    if codes.shape[1] % 2:
        codes = torch.cat([codes, torch.zeros_like(codes[:, :1])], dim=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The int64 codes [out, in_features] of :func:`pack_nibbles` (integer operations only)."""
    p = packed.to(torch.int64)
    return torch.stack([p & 15, p >> 4], dim=2).reshape(p.shape[0], -1)[:, :in_features]


@register_op("linear", ("weight_codes", "weight_zero"))
def linear(args, consts, attrs, ctx):
    """``x @ Wᵀ + b`` with integer weights ``W = q - z`` [out, in] (codes q, one zero point z per row;
    ``packed: 4``: two codes per byte) and an integer bias (accumulator scale S_x·S_w)."""
    a = ctx.arith
    codes = consts["weight_codes"]
    if attrs.get("packed") == 4:
        codes = unpack_nibbles(codes, int(attrs["in_features"]))
    weight = a.tensor(codes) - a.tensor(consts["weight_zero"]).unsqueeze(1)
    y = matmul(args[0], weight.transpose(0, 1), ctx)
    return y + a.tensor(consts["bias"]) if "bias" in consts else y


@register_op("prepend_token", ("token",))
def prepend_token(args, consts, attrs, ctx):
    token = ctx.arith.tensor(consts["token"])
    return torch.cat([token.expand(args[0].shape[0], -1, -1), args[0]], dim=1)


@register_op("add_const", ("value",))
def add_const(args, consts, attrs, ctx):
    return args[0] + ctx.arith.tensor(consts["value"])


@register_op("add")
def add(args, consts, attrs, ctx):
    return args[0] + args[1]


@register_op("heads")
def heads(args, consts, attrs, ctx):
    """[B, N, 3·H·d] -> one of q, k, v as [B, H, N, d] (``which`` 0, 1, 2), as timm's qkv reshape."""
    x = args[0]
    b, n, _ = x.shape
    h = int(attrs["heads"])
    return x.reshape(b, n, 3, h, -1)[:, :, int(attrs["which"])].permute(0, 2, 1, 3)


@register_op("merge_heads")
def merge_heads(args, consts, attrs, ctx):
    x = args[0]
    return x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)


@register_op("matmul")
def matmul_op(args, consts, attrs, ctx):
    """``a @ b`` (``transpose_b``: ``a @ bᵀ``)."""
    b = args[1].transpose(-2, -1) if attrs.get("transpose_b") else args[1]
    return matmul(args[0], b, ctx)


@register_op("take_token")
def take_token(args, consts, attrs, ctx):
    return args[0][:, int(attrs["index"])]


def _kernel(attrs: dict[str, Any], op: str):
    return make_kernel(attrs["family"], op, **({"out_bits": int(attrs["out_bits"])} if "out_bits" in attrs else {}))


@register_op("layernorm", ("scale", "weight", "bias"))
def layernorm(args, consts, attrs, ctx):
    """An integer LayerNorm kernel (family in attrs) with the affine folded; output scale per channel."""
    y, _ = _kernel(attrs, "layernorm")(args[0], consts["scale"], ctx.arith, consts["weight"], consts["bias"])
    return y


@register_op("gelu", ("scale",))
def gelu(args, consts, attrs, ctx):
    """An integer GELU kernel. Elementwise, so it runs once on every integer from min(x) to max(x) (at
    most the 2^b codes of its input point) and is looked up: the same integers, fewer operations."""
    x = args[0]
    if x.numel() == 0:
        return x
    return tabulated(_kernel(attrs, "gelu"), x, consts["scale"], ctx.arith, int(x.min()), int(x.max()))[0]


@register_op("lookup", ("table",))
def lookup(args, consts, attrs, ctx):
    """``table[x - low]``: an elementwise map of integers given by its values on ``low .. low + len - 1``
    (a range the converter proved holds every input), e.g. GELU, shift and AdaLog code of a post-GELU
    point folded into one table over the GELU input codes. An input outside the range is an error."""
    x = args[0]
    table = ctx.arith.tensor(consts["table"])
    index = (x - int(attrs["low"])).to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.numel()):
        raise RangeError(f"lookup: input outside the table's range {attrs['low']}..{int(attrs['low']) + table.numel() - 1}")
    return torch.take(table, index)


@register_op("softmax", ("scale",))
def softmax(args, consts, attrs, ctx):
    """An integer softmax kernel on the q@kᵀ integers [B, H, N, N] (scales: one, or one per head)."""
    return _kernel(attrs, "softmax")(args[0], consts["scale"], ctx.arith)[0]


def bitlog2_levels(y: torch.Tensor, attrs: dict[str, Any], arith: Arith) -> torch.Tensor:
    """BitLog2's integer level of each probability integer y (scale 2^-f): ``D(x_int)`` (int64) of
    ``x_int = clamp(⌊y · int_max / 2^f⌋, 0, int_max - 1)``; shifts, adds and comparisons."""
    from vitquant.quantizers.bitlog2 import dequant_int

    int_max = int(attrs["int_max"])
    x_int = torch.clamp(arith.shift_right(y * int_max, int(attrs["frac_bits"])), 0, int_max - 1)
    return dequant_int(x_int.to(torch.int64), bool(attrs["half"]))


@register_op("bitlog2_av")
def bitlog2_av(args, consts, attrs, ctx):
    """BitLog2 attn@v without multiplications: probabilities y (scale 2^-f) become
    x_int = clamp(⌊y · int_max / 2^f⌋, 0, int_max - 1), D(x_int) = 2^k (+ 2^(k-1) for Half), and
    D @ v = Σ_j (bit_j(D) @ v) << j: sums of selected v rows, shifted (at most two bits of D are set).
    Output scale S_v / divisor (per head when the divisor or v is per head)."""
    a = ctx.arith
    y, v = args
    int_max = int(attrs["int_max"])
    d = bitlog2_levels(y, attrs, a)
    out = torch.zeros(*v.shape[:-2], y.shape[-2], v.shape[-1], dtype=a.dtype)
    for j in range(int_max.bit_length()):
        bit = ((d >> j) & 1).to(a.dtype)
        if bool(bit.any()):
            out = out + a.shift_left(matmul(bit, v, ctx), j)
    return out


@register_op("table_av", ("thresholds", "levels"))
def table_av(args, consts, attrs, ctx):
    """attn@v for an attention quantizer given as a table (log√2, AdaLog, twin-uniform): the code of each
    probability integer y is the number of its head's thresholds t_k <= y (comparisons), its level an
    integer L_c (the level's mantissa aligned onto one shift) looked up in the head's table, then one
    integer matmul of the levels with v. Output scale: the head's Δ · 2^-shift · S_v."""
    a = ctx.arith
    y, v = args
    picked = table_levels(y, a.tensor(consts["thresholds"]), a.tensor(consts["levels"]))
    return matmul(picked, v, ctx)


def table_levels(y: torch.Tensor, thresholds: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The level of each probability integer y [B, H, N, N]: head h's ``levels[h, c]`` [H, K + 1] with c
    the number of its thresholds ``thresholds[h]`` [H, K] (ascending) that are <= y."""
    codes = torch.stack([torch.searchsorted(thresholds[h], y[:, h].contiguous(), right=True) for h in range(y.shape[1])], dim=1)
    return torch.gather(levels.unsqueeze(0).expand(y.shape[0], -1, -1), 2, codes.flatten(2)).reshape(y.shape)


# ---------------------------------------------------------------------------------------- Swin layout


def _grid(x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
    """Tokens [B, H·W, C] (row-major, timm's NHWC flattened) as [B, H, W, C]."""
    return x.reshape(x.shape[0], int(attrs["height"]), int(attrs["width"]), x.shape[-1])


@register_op("roll")
def roll(args, consts, attrs, ctx):
    """Swin's cyclic shift on tokens [B, H·W, C]: ``torch.roll`` by ``shifts`` (rows, columns) on the grid."""
    x = args[0]
    shifts = tuple(int(s) for s in attrs["shifts"])
    return torch.roll(_grid(x, attrs), shifts=shifts, dims=(1, 2)).reshape(x.shape)


@register_op("window_partition")
def window_partition(args, consts, attrs, ctx):
    """Tokens [B, H·W, C] -> windows [B·nW, wh·ww, C] (windows row-major, tokens row-major in each), as
    timm's ``window_partition``."""
    x = _grid(args[0], attrs)
    b, h, w, c = x.shape
    wh, ww = (int(s) for s in attrs["window"])
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


@register_op("window_reverse")
def window_reverse(args, consts, attrs, ctx):
    """Windows [B·nW, wh·ww, C] -> tokens [B, H·W, C]: the inverse of ``window_partition``."""
    x = args[0]
    h, w = int(attrs["height"]), int(attrs["width"])
    wh, ww = (int(s) for s in attrs["window"])
    c = x.shape[-1]
    x = x.reshape(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h * w, c)


@register_op("patch_merge")
def patch_merge(args, consts, attrs, ctx):
    """Swin's patch merging gather: tokens [B, H·W, C] -> [B, H/2·W/2, 4C], each 2x2 neighbourhood's
    channels in timm's order (0,0), (1,0), (0,1), (1,1) (row offset inner)."""
    x = _grid(args[0], attrs)
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
    return x.reshape(b, (h // 2) * (w // 2), 4 * c)


@register_op("window_bias", ("value",))
def window_bias(args, consts, attrs, ctx):
    """Logits [B·nW, H, N, N] plus an integer bias [nW', H, N, N] per window (nW' = nW: relative position
    bias and shift mask; nW' = 1: the bias alone), window w of every image taking row w mod nW'."""
    x = args[0]
    value = ctx.arith.tensor(consts["value"])
    return (x.reshape(-1, *value.shape) + value).reshape(x.shape)


@register_op("sum_tokens")
def sum_tokens(args, consts, attrs, ctx):
    """``Σ_n x[:, n]``: [B, N, C] -> [B, C] (global average pooling, its 1/N folded into the scale)."""
    return args[0].sum(dim=1)
