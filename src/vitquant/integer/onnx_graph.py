"""An ONNX graph under construction, with integer arithmetic of the executors' semantics and static ranges.

Every integer value carries a :class:`~vitquant.integer.fast.Range` derived from constants and shapes
(never from data). The range picks the storage: an op runs in ``int32`` when its operands and result
all lie within ±(2^31 - 1), else in ``int64`` (exact either way: no intermediate leaves its type).

ONNX integer semantics differ from the executors' in two places, and this module builds the executors'
operations from what ONNX has:

- ``Div`` truncates toward zero, the executors floor. ``floor(a / b)`` is ``Div(a, b)`` where the
  ranges prove ``a >= 0, b > 0`` (or both <= 0); otherwise the numerator is made non-negative first:
  ``floor(a / b) = Div(a + K·b, b) - K`` with an integer ``K >= ceil(-min(a) / min(b))`` (b > 0; a
  negative divisor negates both operands), exact because ``floor((a + K·b) / b) = floor(a / b) + K``.
  A divisor whose range holds both signs is refused; a range reaching 0 is taken as >= 1 (a zero divisor
  is an error in the executors too, and the kernels' bounds exclude it).
- ``BitShift`` is defined for unsigned types only. An arithmetic right shift ``a >> k`` is
  ``floor(a / 2^k)`` (above) with ``2^k`` a constant, or ``Pow(2, k)`` for a computed shift
  (0 <= k <= 62, exact); a left shift ``a << k`` is ``a · 2^k``.
- Rounding ``round(x / 2^s)`` (ties to even) is not an ONNX op: it is the executors' own integer formula
  ``(x + 2^(s-1) - 1 + lsb(floor(x / 2^s))) >> s`` (:func:`vitquant.integer.ops.round_shift`), traced
  and lowered with the two floors above (:mod:`vitquant.integer.onnx_lower`).

Other integer ops map one to one: ``Add``, ``Sub``, ``Mul``, ``Neg``, ``Abs``, ``Sign``, ``Min``/``Max``/
``Clip``, ``Where`` and the comparisons, ``BitwiseAnd``, ``ReduceMax``/``ReduceSum``, ``Gather`` for
tables. Constants are initializers, stored once per distinct (type, shape, bytes); node and value
names are numbered in emission order, so the same program gives the same graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from vitquant.errors import ConfigError
from vitquant.integer.fast import Range

try:  # the optional extra: vitquant[onnx]
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from vitquant.integer.onnx_export import ONNX_EXTRA

    raise ConfigError(ONNX_EXTRA) from exc

OPSET = 18  # BitwiseAnd, ReduceMax/ReduceSum with axes as an input
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_SHIFT = 62
BOOL_RANGE = Range(0, 1)

NUMPY = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
         TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_, TensorProto.FLOAT: np.float32,
         TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class Val:
    """A graph value: its name, ONNX element type and, for integers, static range; ``parts``: tighter
    ranges per index of one axis (``(axis, ranges)``, e.g. per head of a ``[B, H, N, d]`` tensor);
    ``origin``: how it was computed, for the peepholes (``("addc", x, c)``: x + constant c, ``("add", x, y)``,
    ``("shr", x, k)``: x >> constant k)."""

    name: str
    dtype: int
    range: Range | None = None
    parts: tuple[int, tuple[Range, ...]] | None = field(default=None, compare=False)
    origin: tuple | None = field(default=None, compare=False)

    @property
    def is_bool(self) -> bool:
        return self.dtype == TensorProto.BOOL


Operand = Val | torch.Tensor | int


def fits_int32(r: Range) -> bool:
    return -INT32_MAX <= r.lo and r.hi <= INT32_MAX


def int_type(*ranges: Range) -> int:
    """int32 when every range fits it, else int64 (a range beyond int64 is an error)."""
    for r in ranges:
        if r.lo < -INT64_MAX or r.hi > INT64_MAX:
            raise ConfigError(f"ONNX export: a value may reach {max(-r.lo, r.hi)}, beyond int64")
    return TensorProto.INT32 if all(fits_int32(r) for r in ranges) else TensorProto.INT64


def const_range(t: torch.Tensor | int) -> Range:
    if isinstance(t, torch.Tensor):
        if t.dtype == torch.bool:
            return BOOL_RANGE
        return Range.of(t.to(torch.int64))
    return Range(int(t), int(t))


def _scalar(b: Operand | None) -> bool:
    """A clamp bound ``Clip`` takes: none, a Python integer or a one-element constant."""
    return b is None or isinstance(b, int) or isinstance(b, torch.Tensor) and b.numel() == 1


def _corners(a: Range, b: Range, fn) -> Range:
    values = [fn(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return Range(min(values), max(values))


class OnnxGraph:
    """Nodes and initializers of one graph, with the integer operations of the module docstring."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[tuple, str] = {}
        self._casts: dict[tuple[str, int], Val] = {}
        self._count = 0
        self.limit: int | None = None
        self.scope = ""  # prefix of the names emitted meanwhile (the program value being built)

    @contextmanager
    def bounded(self, limit: int) -> Iterator[None]:
        """Meanwhile every integer result is known to satisfy ``|value| < limit`` (a contract of the code
        being lowered), which narrows ranges that interval arithmetic over-estimates."""
        outer, self.limit = self.limit, limit
        try:
            yield
        finally:
            self.limit = outer

    def _bound(self, r: Range) -> Range:
        if self.limit is None:
            return r
        return Range(max(r.lo, 1 - self.limit), min(r.hi, self.limit - 1))

    # ------------------------------------------------------------------ plumbing
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}#{self._count}" if self.scope else f"{hint}#{self._count}"

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def split(self, x: Val, axis: int, parts: int) -> list[Val]:
        """``x`` cut into ``parts`` slices of one index along ``axis`` (each keeping its part's range)."""
        names = [self.fresh("split") for _ in range(parts)]
        self.nodes.append(helper.make_node("Split", [x.name], names, name=names[0], axis=axis, num_outputs=parts))
        ranges = x.parts[1] if x.parts is not None and x.parts[0] == axis else (x.range,) * parts
        return [Val(n, x.dtype, r) for n, r in zip(names, ranges)]

    def constant(self, value: np.ndarray | torch.Tensor | int | float, dtype: int, hint: str = "const") -> str:
        """An initializer of ``value`` as ``dtype``, shared by equal constants (checked to convert exactly)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        converted = array.astype(NUMPY[dtype])
        if dtype not in (TensorProto.FLOAT, TensorProto.DOUBLE) and not np.array_equal(converted.astype(np.int64), array.astype(np.int64)):
            raise ConfigError(f"ONNX export: constant {hint} does not fit {TensorProto.DataType.Name(dtype)}")
        converted = converted.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        key = (dtype, converted.shape, converted.tobytes())
        if key not in self._constants:
            name = f"c{len(self._constants)}:{hint}"
            self.initializers.append(numpy_helper.from_array(converted, name))
            self._constants[key] = name
        return self._constants[key]

    def axes(self, *axes: int) -> str:
        return self.constant(np.array(axes, dtype=np.int64), TensorProto.INT64, "axes")

    def shape(self, *dims: int) -> str:
        return self.constant(np.array(dims, dtype=np.int64), TensorProto.INT64, "shape")

    def cast(self, v: Val, dtype: int) -> Val:
        if v.dtype == dtype:
            return v
        key = (v.name, dtype)
        if key not in self._casts:
            rng = v.range if dtype != TensorProto.BOOL else BOOL_RANGE
            self._casts[key] = Val(self.node("Cast", [v.name], "cast", to=dtype), dtype, rng)
        return self._casts[key]

    def operand(self, x: Operand, dtype: int) -> str:
        """The name of ``x`` as ``dtype``: a value (cast if needed) or a constant."""
        if isinstance(x, Val):
            return self.cast(x, dtype).name
        return self.constant(x, dtype)

    @staticmethod
    def range_of(x: Operand) -> Range:
        if isinstance(x, Val):
            if x.range is None:
                raise ConfigError(f"ONNX export: {x.name} has no integer range")
            return x.range
        return const_range(x)

    def _int(self, x: Operand) -> Operand:
        """Booleans as 0/1 integers (as torch promotes them in arithmetic)."""
        if isinstance(x, Val) and x.is_bool:
            return self.cast(x, TensorProto.INT32)
        if isinstance(x, torch.Tensor) and x.dtype == torch.bool:
            return x.to(torch.int64)
        return x

    # ------------------------------------------------------------------ arithmetic
    def compute_type(self, args: list[Operand], *ranges: Range) -> int:
        """int32 where every range fits it and no operand is already int64 (which would cost a Cast), else int64."""
        if any(isinstance(a, Val) and a.dtype == TensorProto.INT64 for a in args):
            int_type(*ranges)  # still refuses ranges beyond int64
            return TensorProto.INT64
        return int_type(*ranges)

    def elementwise(self, op: str, args: list[Operand], out: Range, hint: str | None = None, origin: tuple | None = None) -> Val:
        """``op`` on integer operands, in the type of :meth:`compute_type`."""
        args = [self._int(a) for a in args]
        out = self._bound(out)
        dtype = self.compute_type(args, out, *(self.range_of(a) for a in args))
        name = self.node(op, [self.operand(a, dtype) for a in args], hint or op.lower())
        return Val(name, dtype, out, origin=origin)

    def add(self, a: Operand, b: Operand) -> Val:
        """``a + b``; a constant added to ``x + c`` becomes ``x + (c + b)`` (the first Add, if nothing else
        reads it, is dropped by :meth:`prune`)."""
        if isinstance(b, Val) and not isinstance(a, Val):
            a, b = b, a
        if isinstance(a, Val) and not isinstance(b, Val) and a.origin and a.origin[0] == "addc":
            _, x, c = a.origin
            total = torch.as_tensor(c, dtype=torch.int64) + torch.as_tensor(b, dtype=torch.int64)
            if total.numel() == 1:
                total = int(total.reshape(()))
            return self.add(x, total)
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        if isinstance(a, Val) and not isinstance(b, Val):
            origin = ("addc", a, b)
        else:
            origin = ("add", a, b) if isinstance(a, Val) and isinstance(b, Val) else None
        return self.elementwise("Add", [a, b], Range(ra.lo + rb.lo, ra.hi + rb.hi), origin=origin)

    def sub(self, a: Operand, b: Operand) -> Val:
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        return self.elementwise("Sub", [a, b], Range(ra.lo - rb.hi, ra.hi - rb.lo))

    def mul(self, a: Operand, b: Operand) -> Val:
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        if a is b:  # a square
            return self.elementwise("Mul", [a, b], Range(0 if ra.lo <= 0 <= ra.hi else min(ra.lo**2, ra.hi**2), ra.bound**2))
        return self.elementwise("Mul", [a, b], _corners(ra, rb, lambda x, y: x * y))

    def neg(self, a: Operand) -> Val:
        r = self.range_of(self._int(a))
        return self.elementwise("Neg", [a], Range(-r.hi, -r.lo))

    def abs(self, a: Operand) -> Val:
        r = self.range_of(self._int(a))
        lo = 0 if r.lo <= 0 <= r.hi else min(abs(r.lo), abs(r.hi))
        return self.elementwise("Abs", [a], Range(lo, max(abs(r.lo), abs(r.hi))))

    def sign(self, a: Operand) -> Val:
        r = self.range_of(self._int(a))
        return self.elementwise("Sign", [a], Range(-1 if r.lo < 0 else (0 if r.lo == 0 else 1), 1 if r.hi > 0 else (0 if r.hi == 0 else -1)))

    def minimum(self, a: Operand, b: Operand) -> Val:
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        return self.elementwise("Min", [a, b], Range(min(ra.lo, rb.lo), min(ra.hi, rb.hi)))

    def maximum(self, a: Operand, b: Operand) -> Val:
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        return self.elementwise("Max", [a, b], Range(max(ra.lo, rb.lo), max(ra.hi, rb.hi)))

    def clamp(self, a: Operand, low: Operand | None, high: Operand | None) -> Val:
        """``min(max(a, low), high)`` (torch.clamp): one ``Clip`` for scalar bounds, else ``Max``/``Min``."""
        a = self._int(a)
        if not all(_scalar(b) for b in (low, high)):
            out = a if low is None else self.maximum(a, low)
            return out if high is None else self.minimum(out, high)
        r = self.range_of(a)
        lo = None if low is None else int(low)
        hi = None if high is None else int(high)

        def f(v: int) -> int:
            v = v if lo is None else max(v, lo)
            return v if hi is None else min(v, hi)

        out = Range(f(r.lo), f(r.hi))
        dtype = self.compute_type([a], r, out, *(Range(b, b) for b in (lo, hi) if b is not None))
        inputs = [self.operand(a, dtype), "" if lo is None else self.constant(lo, dtype),
                  "" if hi is None else self.constant(hi, dtype)]
        while inputs[-1] == "":
            inputs.pop()
        return Val(self.node("Clip", inputs, "clip"), dtype, out)

    def floor_div(self, a: Operand, b: Operand) -> Val:
        """``floor(a / b)`` from ONNX's truncating ``Div`` (module docstring)."""
        a, b = self._int(a), self._int(b)
        ra, rb = self.range_of(a), self.range_of(b)
        if rb.lo < 0 < rb.hi or rb.lo == rb.hi == 0:
            raise ConfigError("ONNX export: a division whose divisor may take either sign")
        if rb.hi <= 0:  # floor(a / b) = floor(-a / -b)
            a, b = self.neg(a), (self.neg(b) if isinstance(b, Val) else -b)
            ra, rb = self.range_of(a), self.range_of(b)
        rb = Range(max(rb.lo, 1), rb.hi)
        out = _corners(ra, rb, lambda x, y: x // y)
        if ra.lo >= 0:
            return self._div(a, b, ra, rb, out)
        if isinstance(b, torch.Tensor) and b.numel() > 1:  # K per element: ceil(-lo / b), so K·b < -lo + b
            k = -torch.div(torch.full_like(b, ra.lo), b, rounding_mode="floor")
            offset = k * b
            kr = Range.of(k)
        else:
            k = -(ra.lo // rb.lo)  # ceil(-lo / min b): a + K·b >= 0
            offset = self.mul(b, k) if isinstance(b, Val) else k * int(b)
            kr = Range(k, k)
        if isinstance(a, Val) and a.origin and a.origin[0] == "add" and not isinstance(offset, Val):
            _, x, y = a.origin  # (x + y) + K·b as x + (y + K·b): the constant joins y's own (see add)
            shifted = self.add(x, self.add(y, offset))
        else:
            shifted = self.add(a, offset)
        return self.sub(self._div(shifted, b, self.range_of(shifted), rb, Range(out.lo + kr.lo, out.hi + kr.hi)), k)

    def _div(self, a: Operand, b: Operand, ra: Range, rb: Range, out: Range) -> Val:
        out = self._bound(out)
        dtype = self.compute_type([a, b], ra, rb, out)
        return Val(self.node("Div", [self.operand(a, dtype), self.operand(b, dtype)], "div"), dtype, out)

    def power_of_two(self, k: Operand) -> Operand:
        """``2^k`` for shifts ``0 <= k <= 62``: a constant, or ``Pow(2, k)`` (exact in int64)."""
        k = self._int(k)
        r = self.range_of(k)
        if r.lo < 0 or r.hi > MAX_SHIFT:
            raise ConfigError(f"ONNX export: shifts must lie in 0..{MAX_SHIFT}, got {r.lo}..{r.hi}")
        if not isinstance(k, Val):
            return torch.bitwise_left_shift(torch.ones((), dtype=torch.int64), k) if isinstance(k, torch.Tensor) else 2**k
        return self.elementwise("Pow", [2, k], Range(2**r.lo, 2**r.hi), "pow2")

    def shift_right(self, a: Operand, k: Operand) -> Val:
        """``a >> k`` (arithmetic) = ``floor(a / 2^k)``."""
        if not isinstance(k, Val) and const_range(k) == Range(0, 0):
            return a if isinstance(a, Val) else self.add(a, 0)
        out = self.floor_div(a, self.power_of_two(k))
        return replace(out, origin=("shr", a, k)) if isinstance(a, Val) and not isinstance(k, Val) else out

    def shift_left(self, a: Operand, k: Operand) -> Val:
        """``a << k`` = ``a · 2^k``."""
        if not isinstance(k, Val) and const_range(k) == Range(0, 0) and isinstance(a, Val):
            return a
        return self.mul(a, self.power_of_two(k))

    def bitwise_and(self, a: Operand, b: Operand) -> Val:
        """``a & b``; the parity ``(x >> k) & 1`` of a constant shift is ``min(x & 2^k, 1)`` (bit k of x in two's
        complement, with no division)."""
        if isinstance(b, Val) and not isinstance(a, Val):
            a, b = b, a
        if (isinstance(a, Val) and a.origin and a.origin[0] == "shr" and not isinstance(b, Val)
                and const_range(b) == Range(1, 1) and const_range(a.origin[2]).hi <= MAX_SHIFT):
            _, x, k = a.origin
            bit = self.elementwise("BitwiseAnd", [x, self.power_of_two(k)], Range(0, 2 ** const_range(k).hi), "bitand")
            return self.minimum(bit, 1)
        if all(isinstance(x, Val) and x.is_bool or isinstance(x, torch.Tensor) and x.dtype == torch.bool for x in (a, b)):
            return Val(self.node("And", [self.operand(a, TensorProto.BOOL), self.operand(b, TensorProto.BOOL)], "and"),
                       TensorProto.BOOL, BOOL_RANGE)
        ra, rb = self.range_of(self._int(a)), self.range_of(self._int(b))
        if min(ra.lo, rb.lo) >= 0:
            out = Range(0, min(ra.hi, rb.hi))
        elif ra.lo >= 0 or rb.lo >= 0:
            out = Range(0, ra.hi if ra.lo >= 0 else rb.hi)
        else:
            top = 1 << max(ra.bound, rb.bound).bit_length()
            out = Range(-top, top)
        return self.elementwise("BitwiseAnd", [a, b], out, "bitand")

    def compare(self, op: str, a: Operand, b: Operand) -> Val:
        """``op`` one of ``Greater``, ``GreaterOrEqual``, ``Less``, ``LessOrEqual``, ``Equal``, ``NotEqual``."""
        a, b = self._int(a), self._int(b)
        dtype = self.compute_type([a, b], self.range_of(a), self.range_of(b))
        inputs = [self.operand(a, dtype), self.operand(b, dtype)]
        if op == "NotEqual":
            return Val(self.node("Not", [self.node("Equal", inputs, "eq")], "ne"), TensorProto.BOOL, BOOL_RANGE)
        return Val(self.node(op, inputs, op.lower()), TensorProto.BOOL, BOOL_RANGE)

    def where(self, cond: Operand, a: Operand, b: Operand) -> Val:
        a, b = self._int(a), self._int(b)
        ra, rb = self.range_of(a), self.range_of(b)
        out = ra.hull(rb)
        dtype = self.compute_type([a, b], out)
        c = cond.name if isinstance(cond, Val) else self.constant(cond, TensorProto.BOOL)
        return Val(self.node("Where", [c, self.operand(a, dtype), self.operand(b, dtype)], "where"), dtype, out)

    def reduce(self, op: str, a: Val, axes: list[int], keepdims: bool, count: int) -> Val:
        """``ReduceMax``/``ReduceMin``/``ReduceSum`` over ``axes`` (``count`` elements per result)."""
        a = self._int(a)
        r = self.range_of(a)
        out = self._bound(Range(min(r.lo * count, r.lo), max(r.hi * count, r.hi)) if op == "ReduceSum" else r)
        dtype = self.compute_type([a], r, out)
        name = self.node(op, [self.operand(a, dtype), self.axes(*axes)], op.lower(), keepdims=int(keepdims))
        return Val(name, dtype, out)

    def gather(self, table: torch.Tensor, index: Val, hint: str = "table") -> Val:
        """``table[index]`` of a constant 1-D table (ONNX's negative indices count from the end)."""
        out = Range.of(table.to(torch.int64))
        dtype = int_type(out)
        if index.dtype not in (TensorProto.INT32, TensorProto.INT64):
            index = self.cast(index, int_type(self.range_of(index)))
        return Val(self.node("Gather", [self.constant(table, dtype, hint), index.name], "gather", axis=0), dtype, out)

    # ------------------------------------------------------------------ the model
    def prune(self, outputs: list[str]) -> None:
        """Drop the nodes and initializers no output depends on (left behind by the peepholes)."""
        needed, kept = set(outputs), []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(i for i in node.input if i)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str,
              metadata: dict[str, str], doc: str) -> onnx.ModelProto:
        self.prune([o.name for o in outputs])
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vitquant",
                                  ir_version=9)
        for key in sorted(metadata):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, metadata[key]
        return model
