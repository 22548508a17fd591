"""A kernel as data: the integer operations a prepared kernel runs, recorded once as a graph.

The kernels are written once against :class:`~vitquant.kernels.arith.Arith` and run as tensor code
(:class:`~vitquant.kernels.base.PreparedKernel.apply`). To hand the *same* arithmetic to another
backend (the ONNX exporter, :mod:`vitquant.integer.onnx_lower`) without a third copy of each kernel,
:func:`trace_int` runs the function once on an ``int64`` example under a dispatch mode and records every
ATen operation that touches the input (directly or through earlier recorded results):

    IntGraph.nodes[i] = (aten op, args with Ref(j) for recorded values, kwargs, example output)

Operations on constants alone (a kernel's integer constants, derived from the scale when it was
prepared) run eagerly and enter the graph as constant tensors: the graph holds the kernel's constants
as data, evaluated by the same code the executors run. Reading a recorded value in Python
(``bool(x.any())``, ``x.item()``) would make the graph depend on the example, so it is an error; a
kernel's ``apply`` has no Python branch on a value (see :mod:`vitquant.kernels.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from vitquant.errors import ConfigError


@dataclass(frozen=True)
class Ref:
    """A recorded value: the graph input (``index`` -1) or the output of node ``index``."""

    index: int


@dataclass(frozen=True)
class IntNode:
    """One recorded ATen call: ``op(*args, **kwargs)``; tensors in ``args`` not given as :class:`Ref`
    are constants. ``example`` is its output on the traced example."""

    op: Any
    args: tuple
    kwargs: dict[str, Any]
    example: torch.Tensor


@dataclass
class IntGraph:
    """The recorded operations of a function of one integer tensor; ``output`` is a :class:`Ref`
    (or a constant tensor when the output does not depend on the input)."""

    example: torch.Tensor
    nodes: list[IntNode] = field(default_factory=list)
    output: Ref | torch.Tensor | None = None

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Replay the graph on ``x`` with the recorded ATen ops (for tests: equals the traced function)."""
        values: list[torch.Tensor] = []

        def resolve(a: Any) -> Any:
            if isinstance(a, Ref):
                return x if a.index < 0 else values[a.index]
            return a

        for node in self.nodes:
            values.append(node.op(*tree_map(resolve, node.args), **tree_map(resolve, node.kwargs)))
        return resolve(self.output)


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: IntGraph, x: torch.Tensor) -> None:
        super().__init__()
        self.graph = graph
        self.refs: dict[int, Ref] = {id(x): Ref(-1)}
        self.keep: list[torch.Tensor] = [x]  # keeps ids unique while tracing

    def ref(self, a: Any) -> Any:
        return self.refs.get(id(a), a) if isinstance(a, torch.Tensor) else a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        traced = any(isinstance(a, torch.Tensor) and id(a) in self.refs for a in flat)
        if traced and func is torch.ops.aten._local_scalar_dense.default:
            raise ConfigError("kernel trace: the function reads a value that depends on its input in Python "
                              "(a data-dependent branch); it cannot be exported as a graph")
        out = func(*args, **kwargs)
        if not traced:
            return out  # constants only: evaluated now, a constant of the graph
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"kernel trace: {func} returns {type(out).__name__}; only single-tensor ops are supported")
        node = IntNode(func, tree_map(self.ref, args), tree_map(self.ref, kwargs), out.detach().clone())
        self.graph.nodes.append(node)
        self.refs[id(out)] = Ref(len(self.graph.nodes) - 1)
        self.keep.append(out)
        return out


def trace_int(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> IntGraph:
    """The :class:`IntGraph` of ``fn`` (integer tensor code, e.g. a kernel prepared on
    :data:`~vitquant.kernels.arith.INT`) traced on ``example`` (int64)."""
    if example.dtype != torch.int64:
        raise ConfigError(f"kernel trace: needs an int64 example, got {example.dtype}")
    graph = IntGraph(example.clone())
    x = example.clone()
    recorder = _Recorder(graph, x)
    with torch.no_grad(), recorder:
        out = fn(x)
    graph.output = recorder.ref(out)
    if isinstance(graph.output, torch.Tensor):
        graph.output = graph.output.detach().clone()
    return graph
