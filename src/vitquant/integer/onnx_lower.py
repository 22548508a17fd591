"""Lower a traced integer function (:class:`~vitquant.kernels.trace.IntGraph`) into ONNX nodes.

This is the ONNX backend of the arithmetic written once: a kernel prepared on the ``int64`` backend is
traced (:func:`~vitquant.kernels.trace.trace_int`), and each recorded ATen op becomes the ONNX op of the
same integer semantics (:class:`~vitquant.integer.onnx_graph.OnnxGraph`: floor divisions and arithmetic
shifts built from ``Div``, ranges carried along). Nothing of a kernel is written a second time here:
its constants arrive in the trace, evaluated by the executors' own code.

**Tables.** A chain of elementwise ops that depends on a single value of small static range (at most
:data:`TABLE_LIMIT` integers) and on scalar constants only is a function of that value's integers: it
is evaluated once, with the same ATen ops, on every integer of the range and becomes one ``Gather``
(e.g. I-ViT's ShiftExp of ``x - max x``, a whole GELU kernel). A chain becomes a table when its ops
would cost more than a lookup (:data:`TABLE_COST`).

**Ranges.** Every value's range comes from interval arithmetic on the ops (:mod:`.onnx_graph`), with
what intervals cannot see added: a deferred chain's exact range is its values over its base's range;
``x - max(x)`` over a dim (the max of the same ``x``) lies in ``[min x - max x, 0]`` (softmax's reduced
logits); and every value of a kernel lies within ``±2^52`` (:data:`~vitquant.kernels.arith.EXACT_LIMIT`:
the contract every kernel is written and tested against, so that its float64 twin is exact), which
bounds e.g. I-BERT LayerNorm's ``dev · ⌊2^46/std⌋`` where intervals would not see ``|dev| <= std``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from vitquant.errors import ConfigError
from vitquant.integer.fast import Range
from vitquant.integer.onnx_graph import OnnxGraph, TensorProto, Val, int_type
from vitquant.kernels.arith import EXACT_LIMIT
from vitquant.kernels.trace import IntGraph, IntNode, Ref

#: tabulate a chain over at most this many integers (a 16-bit kernel input has 2^17 - 1)
TABLE_LIMIT = 2**17
#: a chain becomes a table when its estimated cost reaches this (1 = one elementwise op; ORT's Gather
#: costs about 8 of them per element, a signed floor division 3-4, a computed power of two 4)
TABLE_COST = 10

Translate = Callable[[OnnxGraph, list[Any], dict[str, Any], IntNode], Any]
LOWERINGS: dict[str, Translate] = {}
ELEMENTWISE: set[str] = set()  # ops whose output at an element depends on that element only
COST: dict[str, int] = {}


def lowering(*names: str, elementwise: bool = True, cost: int = 1) -> Callable[[Translate], Translate]:
    def wrap(fn: Translate) -> Translate:
        for name in names:
            LOWERINGS[name] = fn
            COST[name] = cost
            if elementwise:
                ELEMENTWISE.add(name)
        return fn
    return wrap


def _alpha(kwargs: dict[str, Any]) -> None:
    if kwargs.get("alpha", 1) != 1:
        raise ConfigError("ONNX export: add/sub with alpha != 1 is not supported")


def _method(name: str, *order: int) -> Translate:
    """``g.<name>(a[i] for i in order)`` (alpha, where given, must be 1)."""

    def translate(g, a, kw, node):
        _alpha(kw)
        return getattr(g, name)(*(a[i] for i in order))
    return translate


for _names, _method_name, _order in (
    (("aten.add.Tensor", "aten.add.Scalar"), "add", (0, 1)),
    (("aten.sub.Tensor", "aten.sub.Scalar"), "sub", (0, 1)),
    (("aten.rsub.Scalar", "aten.rsub.Tensor"), "sub", (1, 0)),
    (("aten.mul.Tensor", "aten.mul.Scalar"), "mul", (0, 1)),
    (("aten.minimum.default",), "minimum", (0, 1)),
    (("aten.maximum.default",), "maximum", (0, 1)),
    (("aten.neg.default",), "neg", (0,)),
    (("aten.abs.default",), "abs", (0,)),
    (("aten.sign.default",), "sign", (0,)),
    (("aten.where.self",), "where", (0, 1, 2)),
    (("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar", "aten.logical_and.default"), "bitwise_and", (0, 1)),
):
    lowering(*_names)(_method(_method_name, *_order))


@lowering("aten.clamp.default", "aten.clamp.Tensor")
def _clamp(g, a, kw, node):
    low = a[1] if len(a) > 1 else kw.get("min")
    high = a[2] if len(a) > 2 else kw.get("max")
    return g.clamp(a[0], low, high)


@lowering("aten.clamp_min.default", "aten.clamp_min.Tensor")
def _clamp_min(g, a, kw, node):
    return g.clamp(a[0], a[1], None)


@lowering("aten.clamp_max.default", "aten.clamp_max.Tensor")
def _clamp_max(g, a, kw, node):
    return g.clamp(a[0], None, a[1])


@lowering("aten.div.Tensor_mode", "aten.div.Scalar_mode", "aten.floor_divide.default", cost=3)
def _floor_div(g, a, kw, node):
    mode = kw.get("rounding_mode", a[2] if len(a) > 2 else "floor")
    if mode != "floor":
        raise ConfigError(f"ONNX export: division with rounding mode {mode!r} is not supported (floor only)")
    return g.floor_div(a[0], a[1])


@lowering("aten.bitwise_right_shift.Tensor", "aten.bitwise_right_shift.Tensor_Scalar", "aten.__rshift__.Scalar",
          "aten.__rshift__.Tensor", cost=3)
def _shift_right(g, a, kw, node):
    return g.shift_right(a[0], a[1])


@lowering("aten.bitwise_left_shift.Tensor", "aten.bitwise_left_shift.Tensor_Scalar", "aten.__lshift__.Scalar",
          "aten.__lshift__.Tensor", cost=2)
def _shift_left(g, a, kw, node):
    return g.shift_left(a[0], a[1])


_COMPARISONS = {"ge": "GreaterOrEqual", "gt": "Greater", "le": "LessOrEqual", "lt": "Less", "eq": "Equal", "ne": "NotEqual"}


def _comparison(onnx_op: str) -> Translate:
    return lambda g, a, kw, node: g.compare(onnx_op, a[0], a[1])


for _name, _op in _COMPARISONS.items():
    lowering(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_comparison(_op))


@lowering("aten.ones_like.default", cost=0)
def _ones_like(g, a, kw, node):
    return torch.ones((), dtype=node.example.dtype)  # broadcasts like the input in every use


@lowering("aten.zeros_like.default", cost=0)
def _zeros_like(g, a, kw, node):
    return torch.zeros((), dtype=node.example.dtype)


@lowering("aten.detach.default", "aten.alias.default", "aten.lift_fresh_copy.default", "aten.clone.default", cost=0)
def _identity(g, a, kw, node):
    return a[0]


@lowering("aten._to_copy.default", cost=0)
def _to_copy(g, a, kw, node):
    dtype = kw.get("dtype", node.example.dtype)
    if dtype == torch.bool:
        return g.compare("NotEqual", a[0], 0)
    if dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"ONNX export: conversion to {dtype} inside an integer kernel")
    return a[0]


@lowering("aten.bucketize.Tensor", cost=6)
def _bucketize(g, a, kw, node):
    """The number of boundaries ``b_j <= x`` (``right``) or ``< x``: comparisons with every boundary, summed."""
    x, boundaries = a[0], a[1]
    if not isinstance(boundaries, torch.Tensor) or boundaries.dim() != 1:
        raise ConfigError("ONNX export: bucketize needs constant 1-D boundaries")
    x = x if isinstance(x, Val) else g.add(x, 0)
    expanded = Val(g.node("Unsqueeze", [x.name, g.axes(-1)], "unsqueeze"), x.dtype, x.range)
    hits = g.compare("GreaterOrEqual" if kw.get("right", False) else "Greater", expanded, boundaries)
    counts = g.cast(hits, TensorProto.INT32)
    return g.reduce("ReduceSum", Val(counts.name, counts.dtype, Range(0, 1)), [-1], False, boundaries.numel())


# ------------------------------------------------------------------------------------------ structure


def _dims(dims: Any, rank: int) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % rank for d in dims] if dims else list(range(rank))


@lowering("aten.amax.default", elementwise=False)
def _amax(g, a, kw, node):
    dims = a[1] if len(a) > 1 else kw.get("dim", [])
    keepdim = a[2] if len(a) > 2 else kw.get("keepdim", False)
    return g.reduce("ReduceMax", _value(g, a[0]), _dims(dims, node.args[0].rank), bool(keepdim), 1)


@lowering("aten.sum.dim_IntList", elementwise=False)
def _sum(g, a, kw, node):
    dims = a[1] if len(a) > 1 else kw.get("dim", [])
    keepdim = a[2] if len(a) > 2 else kw.get("keepdim", False)
    shape = node.args[0].shape
    axes = _dims(dims, len(shape))
    count = 1
    for d in axes:
        count *= shape[d]
    return g.reduce("ReduceSum", _value(g, a[0]), axes, bool(keepdim), count)


@lowering("aten.select.int", elementwise=False)
def _select(g, a, kw, node):
    x = _value(g, a[0])
    index = g.constant(int(a[2]), TensorProto.INT64, "index")
    return Val(g.node("Gather", [x.name, index], "select", axis=int(a[1])), x.dtype, x.range)


@lowering("aten.unsqueeze.default", elementwise=False)
def _unsqueeze(g, a, kw, node):
    x = _value(g, a[0])
    return Val(g.node("Unsqueeze", [x.name, g.axes(int(a[1]))], "unsqueeze"), x.dtype, x.range)


@lowering("aten.stack.default", "aten.cat.default", elementwise=False)
def _stack(g, a, kw, node):
    dim = int(a[1]) if len(a) > 1 else int(kw.get("dim", 0))
    parts = [_value(g, t) for t in a[0]]
    out = parts[0].range
    for p in parts[1:]:
        out = out.hull(p.range)
    dtype = int_type(out)
    names = [g.operand(p, dtype) for p in parts]
    if str(node.op).startswith("aten.stack"):
        names = [g.node("Unsqueeze", [n, g.axes(dim)], "unsqueeze") for n in names]
    return Val(g.node("Concat", names, "concat", axis=dim), dtype, out)


def _value(g: OnnxGraph, x: Any) -> Val:
    if not isinstance(x, Val):
        raise ConfigError("ONNX export: a reduction or layout op on a constant inside a kernel")
    return x


# ------------------------------------------------------------------------------------------ the lowering


class _Shape:
    """What a translation may ask of a recorded argument: its example shape and rank."""

    def __init__(self, t: torch.Tensor) -> None:
        self.shape = tuple(t.shape)
        self.rank = t.dim()


def _key(node: IntNode) -> str:
    return str(node.op)


class Lowering:
    """One traced graph lowered onto ``g`` with its input ``x`` (module docstring); ``tabulate=False``
    emits every op (ranges still exact), for tests."""

    def __init__(self, graph: IntGraph, g: OnnxGraph, x: Val, tabulate: bool = True) -> None:
        self.graph, self.g, self.tabulate = graph, g, tabulate
        self.values: dict[int, Any] = {-1: x}  # node index (-1: input) -> Val or constant
        self.base: dict[int, int] = {}  # deferred elementwise node -> the value its chain depends on
        self._envs: dict[int, dict] = {}  # base -> its domain and the deferred nodes evaluated on it
        with g.bounded(EXACT_LIMIT):  # the kernels' contract: |value| < 2^52
            for i, node in enumerate(graph.nodes):
                if _key(node) not in LOWERINGS:
                    raise ConfigError(f"ONNX export: the integer op {_key(node)} has no ONNX lowering")
                self._visit(i, node)
            self._output = self.force(graph.output.index) if isinstance(graph.output, Ref) else None

    def output(self) -> Val:
        if self._output is None:
            raise ConfigError("ONNX export: the kernel's output does not depend on its input")
        return self._output if isinstance(self._output, Val) else self.g.add(self._output, 0)

    # -------------------------------------------------------------- deferral
    def _small(self, i: int) -> bool:
        v = self.values.get(i)
        return isinstance(v, Val) and v.range is not None and v.range.hi - v.range.lo < TABLE_LIMIT and not v.is_bool

    def _visit(self, i: int, node: IntNode) -> None:
        key = _key(node)
        refs = [a for a in tree_flatten((node.args, node.kwargs))[0] if isinstance(a, Ref)]
        if key in ELEMENTWISE and refs:
            bases = {self.base.get(r.index, r.index if self._small(r.index) else None) for r in refs}
            params = node.args[1:2] if key == "aten.bucketize.Tensor" else ()
            scalars = all(not isinstance(c, torch.Tensor) or c.numel() == 1 or any(c is p for p in params)
                          for c in tree_flatten((node.args, node.kwargs))[0])
            if len(bases) == 1 and None not in bases and scalars:
                self.base[i] = bases.pop()
                return
        self.values[i] = self._emit(i, node)

    def force(self, i: int) -> Any:
        """The value of node ``i``: emitted, or (deferred) a table lookup or its ops emitted now. A
        deferred node's exact range is its values on every integer of its base's range."""
        if i in self.values:
            return self.values[i]
        cone = self._cone(i)
        table = self._evaluate(self.base[i], cone)
        if table is not None and self.tabulate and sum(COST[_key(self.graph.nodes[j])] for j in cone) >= TABLE_COST:
            value = self._lookup(i, table)
        else:
            value = self._emit(i, self.graph.nodes[i])
            if table is not None and isinstance(value, Val) and not value.is_bool:
                value = Val(value.name, value.dtype, Range.of(table.to(torch.int64)))
        self.values[i] = value
        return value

    def _cone(self, i: int) -> list[int]:
        """The deferred nodes node ``i`` is computed from (itself included), in order."""
        base, seen, stack = self.base[i], set(), [i]
        while stack:
            j = stack.pop()
            if j in seen or j == base:
                continue
            seen.add(j)
            node = self.graph.nodes[j]
            stack.extend(r.index for r in tree_flatten((node.args, node.kwargs))[0] if isinstance(r, Ref))
        return sorted(seen)

    def _domain(self, base: int) -> torch.Tensor:
        """Every integer of the base's range, ordered as ``Gather`` indexes a table by the base itself when
        the range holds 0 (index -k is entry size - k), else from the range's low end."""
        r = self.values[base].range
        if r.lo <= 0 <= r.hi:
            positions = torch.arange(r.hi - r.lo + 1, dtype=torch.int64)
            return torch.where(positions <= r.hi, positions, positions - positions.numel())
        return torch.arange(r.lo, r.hi + 1, dtype=torch.int64)

    def _evaluate(self, base: int, cone: list[int]) -> torch.Tensor | None:
        """Node ``cone[-1]`` on the base's domain (None where an op fails there, e.g. a division by zero at
        an integer that never occurs): the cone's ATen ops, evaluated once per base and node."""
        env = self._envs.setdefault(base, {base: self._domain(base)})
        if env.get("failed"):
            return None
        try:
            for j in cone:
                if j not in env:
                    node = self.graph.nodes[j]
                    resolve = lambda a: env[a.index] if isinstance(a, Ref) else a  # noqa: E731
                    env[j] = node.op(*tree_map(resolve, node.args), **tree_map(resolve, node.kwargs))
        except (RuntimeError, ZeroDivisionError):
            env["failed"] = True
            return None
        out = env[cone[-1]]
        domain = env[base]
        out = out.expand(domain.shape) if out.dim() == 0 else out
        return out if out.shape == domain.shape else None

    def _lookup(self, i: int, table: torch.Tensor) -> Val:
        """Node ``i`` as ``Gather(table, base)`` (``base - lo`` where the base's range excludes 0)."""
        b: Val = self.values[self.base[i]]
        index = b if b.range.lo <= 0 <= b.range.hi else self.g.sub(b, b.range.lo)
        if table.dtype == torch.bool:
            return self.g.cast(self.g.gather(table.to(torch.int64), index), TensorProto.BOOL)
        return self.g.gather(table.to(torch.int64), index)

    # -------------------------------------------------------------- emission
    def _emit(self, i: int, node: IntNode) -> Any:
        def resolve(a: Any) -> Any:
            return self.force(a.index) if isinstance(a, Ref) else a

        args = [tree_map(resolve, a) for a in node.args]
        kwargs = {k: tree_map(resolve, v) for k, v in node.kwargs.items()}
        shaped = _ShapedNode(node, self.graph)
        value = LOWERINGS[_key(node)](self.g, args, kwargs, shaped)
        if _key(node).startswith("aten.sub.") and self._max_of_same(node) and isinstance(value, Val):
            r = self.values[node.args[0].index].range
            value = Val(value.name, value.dtype, Range(max(value.range.lo, r.lo - r.hi), min(value.range.hi, 0)))
        return value

    def _max_of_same(self, node: IntNode) -> bool:
        """``x - amax(x, dims, keepdim=True)`` of the same recorded ``x``."""
        x, m = node.args[0], node.args[1]
        if not (isinstance(x, Ref) and isinstance(m, Ref)) or m.index < 0:
            return False
        producer = self.graph.nodes[m.index]
        keepdim = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("keepdim", False)
        return _key(producer) == "aten.amax.default" and producer.args[0] == x and bool(keepdim)


class _ShapedNode:
    """A node whose tensor arguments are replaced by their example shapes (for reductions)."""

    def __init__(self, node: IntNode, graph: IntGraph) -> None:
        def shape(a: Any) -> Any:
            if isinstance(a, Ref):
                return _Shape(graph.example if a.index < 0 else graph.nodes[a.index].example)
            return _Shape(a) if isinstance(a, torch.Tensor) else a

        self.op = node.op
        self.example = node.example
        self.args = tree_map(shape, node.args)


def lower(graph: IntGraph, g: OnnxGraph, x: Val, tabulate: bool = True) -> Val:
    """The output of ``graph`` on ``x``, as ONNX nodes added to ``g``."""
    return Lowering(graph, g, x, tabulate).output()
