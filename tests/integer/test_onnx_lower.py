"""The ONNX backend of the kernels: a traced kernel (or requantization), lowered to ONNX and run in
onnxruntime, gives the executors' integers bit for bit, at every family's widths (16-bit softmax outputs,
16-bit GELU/LayerNorm inputs), at the edges of the input ranges, with tables and without; the floor and
shift constructions match torch's integer semantics."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from vitquant.errors import ConfigError  # noqa: E402
from vitquant.integer import ops  # noqa: E402
from vitquant.integer.fast import Range  # noqa: E402
from vitquant.integer.onnx_graph import OnnxGraph, Val  # noqa: E402
from vitquant.integer.onnx_lower import lower  # noqa: E402
from vitquant.kernels import INT, make_kernel  # noqa: E402
from vitquant.kernels.trace import trace_int  # noqa: E402

GEN = torch.Generator().manual_seed(0)


def run_graph(build, x: torch.Tensor, in_range: Range) -> torch.Tensor:
    """``build(g, x_val) -> Val`` as a one-input model, run in onnxruntime on ``x`` (int64)."""
    g = OnnxGraph()
    out = g.cast(build(g, Val("x", TensorProto.INT64, in_range)), TensorProto.INT64)
    g.nodes.append(helper.make_node("Identity", [out.name], ["y"]))
    model = g.model([helper.make_tensor_value_info("x", TensorProto.INT64, list(x.shape))],
                    [helper.make_tensor_value_info("y", TensorProto.INT64, None)], "test", {}, "")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def assert_lowered(fn, x: torch.Tensor, in_range: Range, tabulate: bool) -> None:
    graph = trace_int(fn, torch.zeros_like(x))
    assert torch.equal(graph.run(x), fn(x))  # the trace replays the function
    got = run_graph(lambda g, v: lower(graph, g, v, tabulate=tabulate), x, in_range)
    expected = fn(x)
    assert torch.equal(got.reshape(expected.shape), expected), (got.reshape(expected.shape) - expected).abs().max()


def logits(limit: int) -> torch.Tensor:
    """[2, 3, 9, 9] integers within ±limit: random rows, a constant row, a one-hot row, rows at both extremes."""
    x = torch.randint(-min(limit, 4000), min(limit, 4000) + 1, (2, 3, 9, 9), generator=GEN)
    x[0, 0, 0] = 0
    x[0, 0, 1] = -limit
    x[0, 0, 1, 3] = limit
    x[0, 1, 2] = limit
    x[1, 2, 3] = torch.randint(-limit, limit + 1, (9,), generator=GEN)
    return x


SCALES = [torch.tensor(0.004, dtype=torch.float64), torch.tensor([0.01, 0.0003, 0.07], dtype=torch.float64)]


@pytest.mark.parametrize("tabulate", [True, False], ids=["tables", "ops"])
@pytest.mark.parametrize("family,out_bits", [("ivit", 8), ("ivit", 16), ("ibert", 8), ("ibert", 16), ("fqvit", 4)])
@pytest.mark.parametrize("per_head", [False, True], ids=["one-scale", "per-head"])
def test_softmax_kernels(family, out_bits, per_head, tabulate):
    prepared = make_kernel(family, "softmax", out_bits=out_bits).prepare(SCALES[per_head], INT)
    limit = 2**40 - 1  # the q·kᵀ product's width
    assert_lowered(prepared.apply, logits(limit), Range(-limit, limit), tabulate)


@pytest.mark.parametrize("tabulate", [True, False], ids=["tables", "ops"])
@pytest.mark.parametrize("family", ["ivit", "ibert"])
@pytest.mark.parametrize("bits", [8, 16])
def test_gelu_kernels_at_8_and_16_bit_inputs(family, bits, tabulate):
    limit = 2 ** (bits - 1)
    x = torch.randint(-limit, limit, (2, 5, 33), generator=GEN)
    x[0, 0, :2] = torch.tensor([-limit, limit - 1])
    prepared = make_kernel(family, "gelu").prepare(torch.tensor(6.0 / limit, dtype=torch.float64), INT)
    assert_lowered(prepared.apply, x, Range(-limit, limit - 1), tabulate)


@pytest.mark.parametrize("family", ["ivit", "ibert", "fqvit"])
@pytest.mark.parametrize("bits", [8, 16])
def test_layernorm_kernels_at_8_and_16_bit_inputs(family, bits):
    channels, limit = 24, 2 ** (bits - 1) - 1
    x = torch.randint(-limit, limit + 1, (2, 7, channels), generator=GEN)
    x[0, 0] = 5  # a constant row: std 0
    x[0, 1] = limit
    x[0, 1, ::2] = -limit
    scale = torch.tensor(0.02, dtype=torch.float64)
    if family == "fqvit":  # PTF: per-channel scales s·2^α
        scale = 0.02 * torch.exp2(torch.randint(0, 4, (channels,), generator=GEN).to(torch.float64))
    weight = torch.randn(channels, generator=GEN)
    weight[3] = 0.0
    prepared = make_kernel(family, "layernorm").prepare(scale, INT, weight, torch.randn(channels, generator=GEN), channels)
    assert_lowered(prepared.apply, x, Range(-limit, limit), tabulate=True)


def test_requantization_rounds_ties_to_even_as_the_executor():
    """``clamp(round(x·m/2^s), lo, hi)``: ties of both parities and signs, per-channel shifts including 0,
    multipliers of up to 31 bits, per-channel and scalar clamps."""
    m = torch.tensor([1, 3, 2**31 - 1, 5, 2**30, 7])
    s = torch.tensor([0, 1, 40, 3, 30, 12])
    bound = 2**20
    x = torch.randint(-bound, bound + 1, (64, 6), generator=GEN)
    tie = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))
    for row, k in enumerate((1, -1, 3, -3)):  # x·m/2^s = k/2 exactly where m = 1 or s small
        x[row] = torch.where((tie * k).abs() <= bound, tie * k, 0)
    x[4], x[5] = bound, -bound
    for low, high in ((torch.tensor(-2**40), torch.tensor(2**40)), (torch.tensor([-9, -100, -128, 0, -5, -1]), torch.tensor(127))):
        consts = {"multiplier": m, "shift": s, "low": low, "high": high}
        assert_lowered(lambda t: ops.OPS["requant"]([t], consts, {}, ops.Context(INT)), x, Range(-bound, bound), True)


@pytest.mark.parametrize("divisor", [7, -7, 1, 2**20])
def test_floor_division_and_shifts_follow_torch(divisor):
    x = torch.randint(-(2**40), 2**40, (300,), generator=GEN)
    x[:6] = torch.tensor([0, -1, 1, -divisor, divisor - 1, -(2**40)])
    r = Range(-(2**40), 2**40)
    got = run_graph(lambda g, v: g.floor_div(v, divisor), x, r)
    assert torch.equal(got, torch.div(x, divisor, rounding_mode="floor"))
    got = run_graph(lambda g, v: g.shift_right(v, 13), x, r)
    assert torch.equal(got, x >> 13)
    got = run_graph(lambda g, v: g.shift_left(g.clamp(v, -(2**20), 2**20), 9), x, r)
    assert torch.equal(got, x.clamp(-(2**20), 2**20) << 9)


def test_a_divisor_of_either_sign_is_refused():
    g = OnnxGraph()
    with pytest.raises(ConfigError, match="either sign"):
        g.floor_div(Val("x", TensorProto.INT64, Range(-5, 5)), Val("y", TensorProto.INT64, Range(-2, 3)))


def test_a_trace_refuses_a_python_branch_on_the_input():
    def branchy(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if bool((x > 0).any()) else x

    with pytest.raises(ConfigError, match="data-dependent"):
        trace_int(branchy, torch.zeros(3, dtype=torch.int64))


def test_constants_alone_are_evaluated_while_tracing():
    """Operations on constants alone (a kernel's constants) run once and enter the graph as data."""
    shift = torch.tensor([0, 2, 5])

    def fn(x: torch.Tensor) -> torch.Tensor:
        bias = torch.where(shift > 0, (torch.ones_like(shift) << (shift - 1).clamp(min=0)) - 1, 0)
        return (x + bias) >> shift

    graph = trace_int(fn, torch.zeros(4, 3, dtype=torch.int64))
    assert [str(n.op) for n in graph.nodes] == ["aten.add.Tensor", "aten.__rshift__.Tensor"]
