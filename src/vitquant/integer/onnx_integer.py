"""The ``integer`` ONNX format: an integer program as an ONNX graph of integer ops (opset 18).

Input ``image``: float32 ``[N, 3, H, W]`` after the model's eval transform (recorded in the metadata).
Outputs ``logits_int`` (int64) and ``logits`` (float32 = ``logits_int`` × the output scale, computed in
float64 as :class:`~vitquant.integer.execute.IntegerModel` does). The only floating-point ops are the
image's quantization (``Mul`` by the float32 ``1/S``, ``Round`` half to even, ``Clip``, ``Cast``: the
executor's :func:`~vitquant.integer.execute.quantize_image`) and the final scaling; everything between
is integer, and ``logits_int`` equals the strict executor's integer logits bit for bit (tests).

Each program op kind has one emitter (:data:`EMITTERS`), given its inputs as graph values and, from
the fast executor's static analysis (:mod:`vitquant.integer.fast`, the same bounds it relies on), each
value's example shape and range:

- ``linear``/``matmul``: ``MatMulInteger`` (u8/i8 operands, i32 accumulation) where the operands' ranges
  fit 8 bits (after a shift by a zero point, per column for the weights), else an ``int32``/``int64``
  ``MatMul`` as the bound K·A·B allows; the bias is an integer ``Add``;
- ``requant`` and the kernels (``softmax``, ``gelu``, ``layernorm``): the executor's own code, traced on
  its int64 arithmetic and lowered op by op (:mod:`~vitquant.integer.onnx_lower`, with the floor and
  rounding constructions of :mod:`~vitquant.integer.onnx_graph`); elementwise chains of one small-range
  value become ``Gather`` tables (GELU, I-ViT's ShiftExp, I-BERT's i-exp);
- ``lookup``, ``bitlog2_av`` and ``table_av``: ``Gather`` of a table over the input's range (the
  attention map's integer level of each probability), then the matmul with v;
- layout: ``Reshape``/``Transpose``/``Gather``/``Concat``; Swin's cyclic shift is a ``Gather`` of the
  token permutation the strict ``roll`` gives; ``window_bias`` and ``sum_tokens`` are ``Add`` and ``ReduceSum``.

The batch dimension is free (``N``); the image size is fixed by the program.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vitquant.errors import ConfigError
from vitquant.integer.execute import prepare_constant
from vitquant.integer.fast import FAST_OPS, FastProgram, Inputs, Range, strict_step
from vitquant.integer.onnx_export import ExportOptions, image_shape, metadata, register_format
from vitquant.integer.onnx_graph import OPSET, OnnxGraph, TensorProto, Val, helper, int_type
from vitquant.integer.onnx_lower import lower
from vitquant.integer.ops import OPS, Context, bitlog2_levels, table_levels, unpack_nibbles
from vitquant.integer.program import IntegerProgram, Op
from vitquant.kernels.arith import FLOAT, INT
from vitquant.kernels.base import make_kernel
from vitquant.kernels.trace import trace_int

STRICT = Context(INT)
U8, I8 = (0, 255), (-128, 127)


@dataclass(frozen=True)
class OpInfo:
    """What an emitter knows of an op: its inputs' example shapes (batch 1), its output's example shape
    and static range (None: unknown), its constants (int64, or float64 for float parameters)."""

    shapes: tuple[torch.Size, ...]
    out_shape: torch.Size
    out_range: Range | None
    consts: dict[str, torch.Tensor]


Emit = Callable[["IntegerExport", Op, list[Val], OpInfo], Val]
EMITTERS: dict[str, Emit] = {}


def emitter(*kinds: str) -> Callable[[Emit], Emit]:
    def wrap(fn: Emit) -> Emit:
        for kind in kinds:
            EMITTERS[kind] = fn
        return fn
    return wrap


def static_analysis(program: IntegerProgram, consts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> list[OpInfo]:
    """Per op, the example shapes and the static output range of the fast executor's prepared steps, on
    one zero image of ``shape``."""
    fast = FastProgram(program, consts)
    values: dict[str, torch.Tensor] = {"input": torch.zeros((1, *shape), dtype=torch.int32)}
    ranges: dict[str, Range | None] = {"input": fast.input_range}
    infos = []
    with torch.inference_mode():
        for op in program.ops:
            op_consts = {role: consts[name] for role, name in op.constants.items()}
            args = [values[n] for n in op.inputs]
            inputs = Inputs(op.kind, tuple(a.shape for a in args), tuple(ranges[n] for n in op.inputs), op_consts,
                            op.attrs, FLOAT)
            step = FAST_OPS.get(op.kind, strict_step)(inputs)
            out = step.run(*args)
            values[op.output], ranges[op.output] = out, step.range
            infos.append(OpInfo(inputs.shapes, out.shape, step.range, op_consts))
    return infos


class IntegerExport:
    """The graph of one program (module docstring)."""

    def __init__(self, program: IntegerProgram, options: ExportOptions) -> None:
        self.program = program
        self.g = OnnxGraph()
        self.shape = image_shape(program, options)
        self.consts = {name: prepare_constant(t, INT) for name, t in program.tensors.items()}

    def build(self):
        p, g = self.program, self.g
        infos = static_analysis(p, self.consts, self.shape)
        env = {"input": self._quantize_input()}
        for op, info in zip(p.ops, infos):
            if op.kind not in EMITTERS:
                raise ConfigError(f"ONNX export: op kind {op.kind!r} has no ONNX form")
            g.scope = op.output
            out = EMITTERS[op.kind](self, op, [env[n] for n in op.inputs], info)
            g.scope = ""
            if info.out_range is not None and out.range is not None:  # both are sound: keep the tighter
                out = replace(out, range=Range(max(out.range.lo, info.out_range.lo), min(out.range.hi, info.out_range.hi)))
            env[op.output] = out
        logits = g.cast(env["logits"], TensorProto.INT64)
        g.nodes.append(helper.make_node("Identity", [logits.name], ["logits_int"], name="logits_int"))
        wide = g.node("Cast", ["logits_int"], "output_scale", to=TensorProto.DOUBLE)
        scaled = g.node("Mul", [wide, g.constant(p.output_scale, TensorProto.DOUBLE, "output_scale")], "output_scale")
        g.nodes.append(helper.make_node("Cast", [scaled], ["logits"], name="logits", to=TensorProto.FLOAT))
        c, h, w = self.shape
        classes = int(infos[-1].out_shape[-1]) if infos else None
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])]
        outputs = [helper.make_tensor_value_info("logits_int", TensorProto.INT64, ["N", classes]),
                   helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])]
        meta = metadata(p, "integer", {"vitquant.opset": OPSET, "vitquant.outputs": {
            "logits_int": "integer logits (int64), equal to vitquant's strict executor",
            "logits": "logits_int x output_scale (float64 product, as float32)"}})
        return g.model(inputs, outputs, f"vitquant integer program ({p.info.get('model', 'model')})", meta,
                       "vitquant integer program: image -> quantized integers -> integer ops -> logits")

    def _quantize_input(self) -> Val:
        """``clamp(round(image · fl32(1/S)), -z, 2^b - 1 - z)`` in float32, then integers (the only float step in)."""
        p, g = self.program, self.g
        inv = 1.0 / torch.tensor(p.input_scale, dtype=torch.float32)
        lo, hi = -p.input_zero_point, 2**p.input_bits - 1 - p.input_zero_point
        g.scope = "input_quant"
        scaled = g.node("Mul", ["image", g.constant(inv, TensorProto.FLOAT, "input_inv_scale")], "mul")
        rounded = g.node("Round", [scaled], "round")
        clipped = g.node("Clip", [rounded, g.constant(float(lo), TensorProto.FLOAT, "input_low"),
                                  g.constant(float(hi), TensorProto.FLOAT, "input_high")], "clip")
        dtype = int_type(Range(lo, hi))
        out = Val(g.node("Cast", [clipped], "codes", to=dtype), dtype, Range(lo, hi))
        g.scope = ""
        return out

    # ------------------------------------------------------------------ helpers for emitters
    def traced(self, fn: Callable[[torch.Tensor], torch.Tensor], x: Val, shape: torch.Size) -> Val:
        """``fn`` (integer tensor code on int64) traced on an example of ``shape`` and lowered onto ``x``."""
        return lower(trace_int(fn, torch.zeros(shape, dtype=torch.int64)), self.g, x)

    def reshape(self, x: Val, *dims: int) -> Val:
        return Val(self.g.node("Reshape", [x.name, self.g.shape(*dims)], "reshape"), x.dtype, x.range)

    def transpose(self, x: Val, *perm: int) -> Val:
        parts = None if x.parts is None else (list(perm).index(x.parts[0]), x.parts[1])
        return Val(self.g.node("Transpose", [x.name], "transpose", perm=list(perm)), x.dtype, x.range, parts)

    def take(self, x: Val, index: int | np.ndarray, axis: int) -> Val:
        idx = self.g.constant(np.asarray(index, dtype=np.int64), TensorProto.INT64, "index")
        return Val(self.g.node("Gather", [x.name, idx], "gather", axis=axis), x.dtype, x.range)


# ---------------------------------------------------------------------------------------- products


@dataclass(frozen=True)
class Int8Form:
    """How a range of integers becomes a MatMulInteger operand: ``x + shift`` as ``dtype`` (u8/i8), with
    the zero point ``zero`` (None: none) giving back ``x``."""

    dtype: int
    shift: int = 0
    zero: int | None = None


def int8_form(r: Range | None) -> Int8Form | None:
    """i8 or u8 as they are, or ``x + z`` in u8 with the zero point ``z = -lo`` (a range of at most 256
    integers starting in -255..-1); None where the range does not fit 8 bits."""
    if r is None:
        return None
    if I8[0] <= r.lo and r.hi <= I8[1]:
        return Int8Form(TensorProto.INT8)
    if U8[0] <= r.lo and r.hi <= U8[1]:
        return Int8Form(TensorProto.UINT8)
    if -255 <= r.lo < 0 and r.hi - r.lo <= 255:
        return Int8Form(TensorProto.UINT8, -r.lo, -r.lo)
    return None


def _int8_operand(g: OnnxGraph, x: Val, form: Int8Form) -> tuple[str, str]:
    """``x`` as the operand of ``form`` and its zero point's name (``""``: none)."""
    v = g.add(x, form.shift) if form.shift else x
    zero = "" if form.zero is None else g.constant(form.zero, form.dtype, "zero_point")
    return g.cast(v, form.dtype).name, zero


def weight_form(codes: torch.Tensor, zero: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor | None] | None:
    """Weights ``W = codes - zero`` [out, in] as the right operand Wᵀ [in, out] of MatMulInteger:
    ``(values, dtype, per-column zero points or None)``: i8 as they are, the u8 codes with their zero
    points, or ``W + d`` in i8 with i8 zero points d per row; None where no form fits."""
    if weight.numel() == 0:
        return None
    if int(weight.min()) >= I8[0] and int(weight.max()) <= I8[1]:
        return weight.transpose(0, 1), TensorProto.INT8, None
    if int(codes.min()) >= 0 and int(codes.max()) <= 255 and int(zero.min()) >= 0 and int(zero.max()) <= 255:
        return codes.transpose(0, 1), TensorProto.UINT8, zero
    d = -128 - weight.min(dim=1).values
    if int((weight.max(dim=1).values + d).max()) <= I8[1] and int(d.min()) >= I8[0] and int(d.max()) <= I8[1]:
        return (weight + d.unsqueeze(1)).transpose(0, 1), TensorProto.INT8, d
    return None


def _head_ranges(x: Val, heads: int) -> tuple[Range, ...]:
    """Per head (axis 1) ranges of ``x``: its parts there, else its range for every head."""
    return x.parts[1] if x.parts is not None and x.parts[0] == 1 else (x.range,) * heads


def _matmul(e: IntegerExport, a: Val, b: Val, k: int, out_range: Range, heads: int | None = None) -> Val:
    """``a @ b`` of runtime values: MatMulInteger where both fit 8 bits; per head (axis 1 of ``heads``)
    where only each head's ranges do (a zero point per head: q, k and v with per-head quantizers), the
    heads' products concatenated; else an integer MatMul."""
    g = e.g
    fa, fb = int8_form(a.range), int8_form(b.range)
    if fa is not None and fb is not None:
        left, right = _int8_operand(g, a, fa), _int8_operand(g, b, fb)
        return _matmul_integer(g, [left[0], right[0], left[1], right[1]], out_range)
    if heads is not None and heads > 1:
        forms = [(int8_form(ra), int8_form(rb)) for ra, rb in zip(_head_ranges(a, heads), _head_ranges(b, heads))]
        if all(f is not None for pair in forms for f in pair):
            products = []
            for x, y, (fx, fy) in zip(g.split(a, 1, heads), g.split(b, 1, heads), forms):
                left, right = _int8_operand(g, x, fx), _int8_operand(g, y, fy)
                products.append(_matmul_integer(g, [left[0], right[0], left[1], right[1]], out_range).name)
            return Val(g.node("Concat", products, "heads", axis=1), TensorProto.INT32, out_range)
    dtype = int_type(Range.within(k * a.range.bound * b.range.bound), a.range, b.range)
    return Val(g.node("MatMul", [g.operand(a, dtype), g.operand(b, dtype)], "matmul"), dtype, out_range)


def _matmul_integer(g: OnnxGraph, inputs: list[str], out_range: Range) -> Val:
    while inputs[-1] == "":
        inputs.pop()
    return Val(g.node("MatMulInteger", inputs, "matmul_integer"), TensorProto.INT32, out_range)


@emitter("linear")
def _linear(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """``x @ Wᵀ + b``: MatMulInteger with the weights as u8/i8 codes and per-column zero points where
    the activations fit 8 bits, else an integer MatMul."""
    g, x = e.g, args[0]
    codes = info.consts["weight_codes"]
    if op.attrs.get("packed") == 4:
        codes = unpack_nibbles(codes, int(op.attrs["in_features"]))
    zero = info.consts["weight_zero"].to(torch.int64)
    weight = codes.to(torch.int64) - zero.unsqueeze(1)  # [out, in]
    bias = info.consts.get("bias")
    acc_range = Range.within(x.range.bound * int(weight.abs().sum(dim=1).max()))
    out_range = info.out_range or (acc_range if bias is None else acc_range + Range.of(bias))
    fx, fw = int8_form(x.range), weight_form(codes.to(torch.int64), zero, weight)
    if fx is not None and fw is not None:
        left = _int8_operand(g, x, fx)
        values, dtype, zeros = fw
        right = g.constant(values, dtype, "weight"), "" if zeros is None else g.constant(zeros, dtype, "weight_zero")
        acc = _matmul_integer(g, [left[0], right[0], left[1], right[1]], acc_range)
    else:
        dtype = int_type(out_range, acc_range, x.range)
        wt = g.constant(weight.transpose(0, 1), dtype, "weight")
        acc = Val(g.node("MatMul", [g.operand(x, dtype), wt], "matmul"), dtype, acc_range)
    return acc if bias is None else g.add(acc, bias)


@emitter("matmul")
def _matmul_op(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    a, b = args
    if op.attrs.get("transpose_b"):
        rank = len(info.shapes[1])
        b = e.transpose(b, *range(rank - 2), rank - 1, rank - 2)
    k = int(info.shapes[0][-1])
    return _matmul(e, a, b, k, info.out_range or Range.within(k * a.range.bound * b.range.bound), _heads_of(info))


def _heads_of(info: OpInfo) -> int | None:
    """The heads (axis 1) of attention operands ``[B, H, N, d]``."""
    return int(info.shapes[0][1]) if len(info.shapes[0]) == 4 else None


def _levels_av(e: IntegerExport, y: Val, v: Val, table: torch.Tensor, info: OpInfo) -> Val:
    """attn@v from the attention map's integer levels: ``table`` [H or 1, hi - lo + 1] over y's range,
    looked up (per head: offset by the head's row), then one matmul with v."""
    g, r = e.g, y.range
    heads, width = table.shape
    index = g.sub(y, r.lo) if r.lo else y
    if heads > 1:
        offsets = (width * torch.arange(heads, dtype=torch.int64)).reshape(1, heads, 1, 1)
        index = g.add(index, offsets)
    levels = g.gather(table.flatten(), index, "levels")
    if heads > 1:
        levels = replace(levels, parts=(1, tuple(Range.of(row) for row in table)))
    k = int(info.shapes[0][-1])
    return _matmul(e, levels, v, k, info.out_range or Range.within(k * levels.range.bound * v.range.bound), _heads_of(info))


def _table_range(y: Val, what: str) -> Range:
    if y.range is None or y.range.hi - y.range.lo >= 2**17:
        raise ConfigError(f"ONNX export: {what} needs its input's static range (at most 2^17 integers)")
    return y.range


@emitter("bitlog2_av")
def _bitlog2_av(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """BitLog2 attn@v: the level D(x_int(y)) of every y in range (:func:`~vitquant.integer.ops.bitlog2_levels`,
    the strict op's), looked up, then ``D @ v`` (the same products as the strict op's shifted sums)."""
    r = _table_range(args[0], "bitlog2_av")
    domain = torch.arange(r.lo, r.hi + 1, dtype=torch.int64)
    return _levels_av(e, args[0], args[1], bitlog2_levels(domain, op.attrs, INT).reshape(1, -1), info)


@emitter("table_av")
def _table_av(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """Table attn@v: each head's level of every y in range (:func:`~vitquant.integer.ops.table_levels`)."""
    r = _table_range(args[0], "table_av")
    thresholds, levels = info.consts["thresholds"], info.consts["levels"]
    heads = thresholds.shape[0]
    domain = torch.arange(r.lo, r.hi + 1, dtype=torch.int64).reshape(1, 1, 1, -1).expand(1, heads, 1, -1)
    return _levels_av(e, args[0], args[1], table_levels(domain, thresholds, levels).reshape(heads, -1), info)


# ---------------------------------------------------------------------------------------- traced ops


@emitter("requant")
def _requant(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """The strict op's ``clamp(round(x·m / 2^s), lo, hi)`` (ties to even), traced and lowered."""
    out = e.traced(lambda x: OPS["requant"]([x], info.consts, op.attrs, STRICT), args[0], info.shapes[0])
    return replace(out, parts=clamp_parts(info.consts["low"], info.consts["high"], len(info.out_shape), out.range))


def clamp_parts(low: torch.Tensor, high: torch.Tensor, rank: int, r: Range) -> tuple[int, tuple[Range, ...]] | None:
    """The ranges per index of the one axis along which a clamp's bounds vary (None: scalar bounds)."""
    shape = torch.broadcast_shapes(low.shape, high.shape)
    varying = [i for i, n in enumerate(shape) if n > 1]
    if len(varying) != 1 or len(shape) > rank:
        return None
    lo, hi = (t.expand(shape).reshape(-1) for t in (low, high))
    axis = rank - len(shape) + varying[0]
    return axis, tuple(Range(max(int(a), r.lo), min(int(b), r.hi)) for a, b in zip(lo, hi))


def _family(op: Op, kind: str):
    return make_kernel(op.attrs["family"], kind, **({"out_bits": int(op.attrs["out_bits"])} if "out_bits" in op.attrs else {}))


def _kernel(e: IntegerExport, prepared, x: Val, shape: torch.Size) -> Val:
    """A prepared kernel (int64 arithmetic) traced and lowered, once its input range is proven."""
    prepared.check_shape(tuple(shape))
    if x.range is None or x.range.bound >= prepared.input_limit:
        raise ConfigError(f"ONNX export: {prepared.name} input range {x.range} not proven within |x| < {prepared.input_limit}")
    out = e.traced(prepared.apply, x, shape)
    return Val(out.name, out.dtype, Range(max(out.range.lo, -prepared.bound), min(out.range.hi, prepared.bound)))


@emitter("softmax")
def _softmax(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return _kernel(e, _family(op, "softmax").prepare(info.consts["scale"], INT), args[0], info.shapes[0])


@emitter("gelu")
def _gelu(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return _kernel(e, _family(op, "gelu").prepare(info.consts["scale"], INT), args[0], info.shapes[0])


@emitter("layernorm")
def _layernorm(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    c = info.consts
    prepared = _family(op, "layernorm").prepare(c["scale"], INT, c["weight"], c["bias"], int(info.shapes[0][-1]))
    return _kernel(e, prepared, args[0], info.shapes[0])


@emitter("lookup")
def _lookup(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """``table[x - low]``; the input's static range must lie within the table (the strict op checks each run)."""
    table, low, x = info.consts["table"], int(op.attrs["low"]), args[0]
    if x.range is None or x.range.lo < low or x.range.hi >= low + table.numel():
        raise ConfigError(f"ONNX export: lookup input range {x.range} not within its table {low}..{low + table.numel() - 1}")
    return e.g.gather(table.reshape(-1), e.g.sub(x, low) if low else x)


# ---------------------------------------------------------------------------------------- layout


@emitter("patchify")
def _patchify(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    _, c, h, w = info.shapes[0]
    p = int(op.attrs["patch"])
    x = e.reshape(args[0], -1, c, h // p, p, w // p, p)
    x = e.transpose(x, 0, 2, 4, 1, 3, 5)
    return e.reshape(x, -1, (h // p) * (w // p), c * p * p)


@emitter("heads")
def _heads(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """q, k or v [B, H, N, d] of the qkv channels [B, N, 3·H·d]; per-channel ranges become per-head ones."""
    _, n, _ = info.shapes[0]
    heads, which, d = int(op.attrs["heads"]), int(op.attrs["which"]), int(info.out_shape[-1])
    x = e.reshape(args[0], -1, n, 3, heads, d)
    x = e.take(x, which, 2)
    out = e.transpose(x, 0, 2, 1, 3)
    parts = args[0].parts
    if parts is not None and parts[0] == len(info.shapes[0]) - 1 and len(parts[1]) == 3 * heads * d:
        mine = parts[1][which * heads * d:(which + 1) * heads * d]
        per_head = []
        for h in range(heads):
            head = mine[h * d:(h + 1) * d]
            per_head.append(Range(min(r.lo for r in head), max(r.hi for r in head)))
        out = replace(out, parts=(1, tuple(per_head)))
    return out


@emitter("merge_heads")
def _merge_heads(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    _, h, n, d = info.shapes[0]
    return e.reshape(e.transpose(args[0], 0, 2, 1, 3), -1, n, h * d)


@emitter("take_token")
def _take_token(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return e.take(args[0], int(op.attrs["index"]), 1)


@emitter("prepend_token")
def _prepend_token(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    g, x = e.g, args[0]
    token = info.consts["token"]
    out = x.range.hull(Range.of(token))
    dtype = int_type(out)
    batch = g.node("Shape", [x.name], "batch", start=0, end=1)
    shape = g.node("Concat", [batch, g.shape(*token.shape[1:])], "shape", axis=0)
    tokens = g.node("Expand", [g.constant(token, dtype, "token"), shape], "expand")
    return Val(g.node("Concat", [tokens, g.operand(x, dtype)], "concat", axis=1), dtype, out)


@emitter("roll")
def _roll(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    """Swin's cyclic shift: a ``Gather`` of tokens by the permutation the strict op makes of token indices."""
    _, tokens, _ = info.shapes[0]
    index = torch.arange(tokens, dtype=torch.int64).reshape(1, tokens, 1)
    perm = OPS["roll"]([index], {}, op.attrs, STRICT).reshape(-1)
    return e.take(args[0], perm.numpy(), 1)


@emitter("window_partition")
def _window_partition(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    h, w = int(op.attrs["height"]), int(op.attrs["width"])
    wh, ww = (int(s) for s in op.attrs["window"])
    c = info.shapes[0][-1]
    x = e.reshape(args[0], -1, h // wh, wh, w // ww, ww, c)
    return e.reshape(e.transpose(x, 0, 1, 3, 2, 4, 5), -1, wh * ww, c)


@emitter("window_reverse")
def _window_reverse(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    h, w = int(op.attrs["height"]), int(op.attrs["width"])
    wh, ww = (int(s) for s in op.attrs["window"])
    c = info.shapes[0][-1]
    x = e.reshape(args[0], -1, h // wh, w // ww, wh, ww, c)
    return e.reshape(e.transpose(x, 0, 1, 3, 2, 4, 5), -1, h * w, c)


@emitter("patch_merge")
def _patch_merge(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    h, w = int(op.attrs["height"]), int(op.attrs["width"])
    c = info.shapes[0][-1]
    x = e.reshape(args[0], -1, h // 2, 2, w // 2, 2, c)
    return e.reshape(e.transpose(x, 0, 1, 3, 4, 2, 5), -1, (h // 2) * (w // 2), 4 * c)


# ---------------------------------------------------------------------------------------- sums


@emitter("add")
def _add(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return e.g.add(args[0], args[1])


@emitter("add_const")
def _add_const(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return e.g.add(args[0], info.consts["value"])


@emitter("window_bias")
def _window_bias(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    value = info.consts["value"]
    x = e.reshape(args[0], -1, *value.shape)
    y = e.g.add(x, value)
    return e.reshape(y, -1, *info.shapes[0][1:])


@emitter("sum_tokens")
def _sum_tokens(e: IntegerExport, op: Op, args: list[Val], info: OpInfo) -> Val:
    return e.g.reduce("ReduceSum", args[0], [1], False, int(info.shapes[0][1]))


@register_format("integer")
def export_integer(program: IntegerProgram, options: ExportOptions) -> Any:
    """The ``integer`` format (module docstring): an ``onnx.ModelProto``."""
    missing = sorted({op.kind for op in program.ops} - set(EMITTERS))
    if missing:
        raise ConfigError(f"ONNX export: op kinds without an ONNX form: {', '.join(missing)}")
    return IntegerExport(program, options).build()
