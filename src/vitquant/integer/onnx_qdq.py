"""The ``qdq`` ONNX format: the standard QuantizeLinear/DequantizeLinear form of a uniform-only program.

What TensorRT, OpenVINO and onnxruntime's quantized kernels consume: every value is float, each
quantization point of the program a ``QuantizeLinear``/``DequantizeLinear`` pair at its scale and zero
point (per channel where the program's are), weights stored as their 8-bit codes behind a per-channel
``DequantizeLinear``, and the float ops between them: ``MatMul``, ``LayerNormalization``, ``Softmax``,
GELU (``0.5·x·(1 + erf(x/√2))``), ``Add``, the layout ops. Input ``image`` (float32 [N, 3, H, W] after
the eval transform), output ``logits`` (float32). The values' scales are the ones the converter records
(``scale:<value>`` tensors of the program).

Where it differs from the simulated (fake-quantized) model, and from the integer program:

- the non-linear ops are the exact float ops, not the integer kernels (their inputs stay quantized at the
  kernels' points, as in the program);
- ``QuantizeLinear`` divides by the scale in float32; the model multiplies by its stored reciprocal and
  the program by a dyadic ``m/2^s``: a value within float32 rounding of a tie may land on the other code;
- the residual stream's fixed-point points are 16 bits or wider (no ONNX quantized type holds more than
  16), so the residual adds run in float; LayerNorm's epsilon is 1e-6 (timm's ViT/DeiT/Swin), which the
  integer kernels ignore;
- an 8-bit point whose zero point falls outside uint8 (all its integers positive) is quantized with the
  zero point clamped and the rest as a float offset subtracted before and added after the pair;
- points of other widths than 8 bits (W4A4) have no standard QDQ form: such programs, and non-uniform
  formats (BitLog2, log√2, AdaLog or twin-uniform attention maps, AdaLog's post-GELU table), are refused.
"""

from __future__ import annotations

import math
from typing import Any


import torch

from vitquant.errors import ConfigError
from vitquant.integer.convert import SCALE_PREFIX
from vitquant.integer.onnx_export import ExportOptions, image_shape, metadata, register_format
from vitquant.integer.onnx_graph import OPSET, OnnxGraph, TensorProto, Val, helper
from vitquant.integer.onnx_integer import EMITTERS as INTEGER_EMITTERS
from vitquant.integer.onnx_integer import IntegerExport, static_analysis
from vitquant.integer.ops import unpack_nibbles
from vitquant.integer.program import IntegerProgram, Op

FLOAT = TensorProto.FLOAT
LAYOUT = ("patchify", "heads", "merge_heads", "take_token", "roll", "window_partition", "window_reverse", "patch_merge")
LN_EPS = 1e-6


class QdqExport(IntegerExport):
    """The float graph of one program (module docstring); the layout ops are the integer format's emitters
    (they move values of any type)."""

    def scale(self, name: str) -> torch.Tensor:
        key = SCALE_PREFIX + name
        if key not in self.program.tensors:
            raise ConfigError(f"ONNX QDQ export: the program records no scale of {name!r}; convert and save it again "
                              "with this version of vitquant")
        return self.program.tensors[key].to(torch.float64)

    def const(self, value: torch.Tensor | float, hint: str) -> str:
        return self.g.constant(torch.as_tensor(value, dtype=torch.float64).to(torch.float32), FLOAT, hint)

    def build(self):
        p, g = self.program, self.g
        infos = static_analysis(p, self.consts, self.shape)
        env = {"input": self._quantize_input()}
        for op, info in zip(p.ops, infos):
            g.scope = op.output
            if op.kind in LAYOUT:
                out = INTEGER_EMITTERS[op.kind](self, op, [env[n] for n in op.inputs], info)
                if op.kind == "heads":
                    out = self._head_scale(op, out)
            elif op.kind in QDQ_EMITTERS:
                out = QDQ_EMITTERS[op.kind](self, op, [env[n] for n in op.inputs], info)
            else:
                raise ConfigError(f"ONNX QDQ export: op {op.kind!r} ({op.output}) has no QDQ form; the QDQ format "
                                  "takes uniform-only programs (use --format integer)")
            g.scope = ""
            env[op.output] = out
        g.nodes.append(helper.make_node("Identity", [env["logits"].name], ["logits"], name="logits"))
        c, h, w = self.shape
        classes = int(infos[-1].out_shape[-1])
        inputs = [helper.make_tensor_value_info("image", FLOAT, ["N", c, h, w])]
        outputs = [helper.make_tensor_value_info("logits", FLOAT, ["N", classes])]
        meta = metadata(p, "qdq", {"vitquant.opset": OPSET, "vitquant.outputs": {"logits": "float logits"}})
        return g.model(inputs, outputs, f"vitquant QDQ model ({p.info.get('model', 'model')})", meta,
                       "vitquant QDQ model: QuantizeLinear/DequantizeLinear around float ops")

    def _head_scale(self, op: Op, out: Val) -> Val:
        """q as the model hands it to its point is the qkv channels' integers at another scale (times the
        attention's 1/√d): the float value is rescaled by the ratio, per head."""
        heads, which = int(op.attrs["heads"]), int(op.attrs["which"])
        s_in, s_out = self.scale(op.inputs[0]), self.scale(op.output)
        per_head = s_in.reshape(3, heads, -1)[which][:, 0] if s_in.numel() > 1 else s_in.reshape(1).expand(heads)
        ratio = (s_out.reshape(-1).expand(heads) / per_head).reshape(1, heads, 1, 1)
        if torch.allclose(ratio, torch.ones_like(ratio), rtol=1e-12, atol=0):
            return out
        return self.float_op("Mul", [out.name, self.const(ratio, "head_scale")], "head_scale")

    def _quantize_input(self) -> Val:
        p = self.program
        if p.input_bits != 8:
            raise ConfigError(f"ONNX QDQ export: the image is quantized to {p.input_bits} bits; QDQ takes 8-bit points")
        self.g.scope = "input_quant"
        out = self.qdq(Val("image", FLOAT), torch.tensor(p.input_scale), torch.tensor(-p.input_zero_point),
                       torch.tensor(255 - p.input_zero_point), "input")
        self.g.scope = ""
        return out

    def qdq(self, x: Val, scale: torch.Tensor, low: torch.Tensor, high: torch.Tensor, what: str) -> Val:
        """``x`` through QuantizeLinear/DequantizeLinear at ``scale`` with the integers ``low..high`` of the
        program (uint8 zero point ``-low``); per channel along the last axis where the parameters vary.

        A point whose zero point is outside 0..255 (its integers all positive, e.g. 5..260 for an attention
        map with no exact-zero probability, or all below -255) is expressed with the zero point clamped
        into uint8 and the rest ``o`` moved into a float offset: ``DQ(Q(x - o·Δ)) + o·Δ``. This rounds
        ``(x - o·Δ)/Δ`` in float32 where the program rounds ``x/Δ``: a value within float rounding of a
        tie may land on the other code, as QuantizeLinear's division already allows."""
        shape = torch.broadcast_shapes(scale.shape, low.shape, high.shape)
        n = math.prod(shape)
        if n > 1 and sum(d > 1 for d in shape) != 1:
            raise ConfigError(f"ONNX QDQ export: {what} is quantized along more than one axis")
        scale, low, high = (t.expand(shape).reshape(-1) for t in (scale, low, high))
        span = high - low
        if not bool((span == 255).all()):
            raise ConfigError(f"ONNX QDQ export: {what} is not an 8-bit point (codes {int(low.min())}..{int(high.max())}); "
                              "QDQ takes 8-bit points (use --format integer)")
        zero = (-low).clamp(0, 255)
        offset = low + zero  # 0 where the zero point fits uint8
        axis = {"axis": -1} if n > 1 else {}
        per = (lambda t: t) if n > 1 else (lambda t: t[0])
        shift = None
        if bool((offset != 0).any()):
            shift = self.const(per(offset.to(torch.float64) * scale.to(torch.float64)), "offset")
            x = self.float_op("Sub", [x.name, shift], "offset")
        s = self.const(per(scale), "scale")
        z = self.g.constant(per(zero).to(torch.uint8), TensorProto.UINT8, "zero_point")
        q = self.g.node("QuantizeLinear", [x.name, s, z], "quantize", **axis)
        out = Val(self.g.node("DequantizeLinear", [q, s, z], "dequantize", **axis), FLOAT)
        return out if shift is None else self.float_op("Add", [out.name, shift], "offset")

    def float_op(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> Val:
        return Val(self.g.node(op, inputs, hint, **attrs), FLOAT)


QDQ_EMITTERS: dict[str, Any] = {}


def qdq_emitter(*kinds: str):
    def wrap(fn):
        for kind in kinds:
            QDQ_EMITTERS[kind] = fn
        return fn
    return wrap


@qdq_emitter("requant")
def _requant(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    """A point of the program: Q/DQ at its scale and codes; the residual stream's wide fixed-point points and
    the logits' scaling (no 8-bit type) stay float."""
    low, high = info.consts["low"], info.consts["high"]
    if int((high - low).max()) > 255:
        return args[0]
    return e.qdq(args[0], e.scale(op.output), low, high, op.output)


@qdq_emitter("linear")
def _linear(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    """``x @ Wᵀ + b`` with ``W = DequantizeLinear(codes, S_w, z)`` per output channel (S_w = S_acc / S_x)."""
    codes = info.consts["weight_codes"]
    if op.attrs.get("packed") == 4:
        codes = unpack_nibbles(codes, int(op.attrs["in_features"]))
    zero = info.consts["weight_zero"].to(torch.int64)
    if int(codes.max()) > 255 or int(codes.min()) < 0 or int(zero.min()) < 0 or int(zero.max()) > 255:
        raise ConfigError(f"ONNX QDQ export: {op.output}: weight codes outside 0..255")
    acc = e.scale(op.output).reshape(-1)
    w_scale = acc / e.scale(op.inputs[0]).reshape(())
    g = e.g
    weight = g.node("DequantizeLinear", [g.constant(codes.transpose(0, 1).to(torch.uint8), TensorProto.UINT8, "weight"),
                                         e.const(w_scale, "weight_scale"),
                                         g.constant(zero.to(torch.uint8), TensorProto.UINT8, "weight_zero")],
                    "weight", axis=1)
    out = e.float_op("MatMul", [args[0].name, weight], "matmul")
    if "bias" in info.consts:
        out = e.float_op("Add", [out.name, e.const(info.consts["bias"].to(torch.float64) * acc, "bias")], "bias")
    return out


@qdq_emitter("matmul")
def _matmul(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    b = args[1]
    if op.attrs.get("transpose_b"):
        rank = len(info.shapes[1])
        b = e.transpose(b, *range(rank - 2), rank - 1, rank - 2)
    return e.float_op("MatMul", [args[0].name, b.name], "matmul")


@qdq_emitter("layernorm")
def _layernorm(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    c = info.consts
    return e.float_op("LayerNormalization", [args[0].name, e.const(c["weight"], "ln_weight"), e.const(c["bias"], "ln_bias")],
                      "layernorm", axis=-1, epsilon=LN_EPS)


@qdq_emitter("gelu")
def _gelu(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    """``0.5·x·(1 + erf(x/√2))`` (opset 18 has no Gelu op)."""
    x = args[0].name
    erf = e.g.node("Erf", [e.g.node("Mul", [x, e.const(1 / math.sqrt(2.0), "inv_sqrt2")], "scaled")], "erf")
    one = e.g.node("Add", [erf, e.const(1.0, "one")], "one_plus")
    return e.float_op("Mul", [e.g.node("Mul", [x, e.const(0.5, "half")], "half_x"), one], "gelu")


@qdq_emitter("softmax")
def _softmax(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    return e.float_op("Softmax", [args[0].name], "softmax", axis=-1)


@qdq_emitter("add")
def _add(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    return e.float_op("Add", [args[0].name, args[1].name], "add")


@qdq_emitter("add_const", "window_bias")
def _add_const(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    """A constant of the program's integers at the value's scale (Swin's window bias: per window, and per head)."""
    value = info.consts["value"].to(torch.float64) * e.scale(op.output)
    if op.kind == "add_const":
        return e.float_op("Add", [args[0].name, e.const(value, "value")], "add")
    x = e.reshape(args[0], -1, *value.shape)
    y = e.float_op("Add", [x.name, e.const(value, "window_bias")], "add")
    return e.reshape(y, -1, *info.shapes[0][1:])


@qdq_emitter("prepend_token")
def _prepend_token(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    g, x = e.g, args[0]
    token = info.consts["token"].to(torch.float64) * e.scale(op.output)
    batch = g.node("Shape", [x.name], "batch", start=0, end=1)
    shape = g.node("Concat", [batch, g.shape(*token.shape[1:])], "shape", axis=0)
    tokens = g.node("Expand", [e.const(token, "token"), shape], "expand")
    return e.float_op("Concat", [tokens, x.name], "concat", axis=1)


@qdq_emitter("sum_tokens")
def _sum_tokens(e: QdqExport, op: Op, args: list[Val], info) -> Val:
    return e.float_op("ReduceSum", [args[0].name, e.g.axes(1)], "sum", keepdims=0)


@register_format("qdq")
def export_qdq(program: IntegerProgram, options: ExportOptions) -> Any:
    """The ``qdq`` format (module docstring): an ``onnx.ModelProto``."""
    supported = set(QDQ_EMITTERS) | set(LAYOUT)
    missing = sorted({op.kind for op in program.ops} - supported)
    if missing:
        raise ConfigError(f"ONNX QDQ export: op kinds without a QDQ form: {', '.join(missing)} (QDQ takes uniform-only "
                          "programs; use --format integer)")
    return QdqExport(program, options).build()



