"""The fast executor gives the strict executor's integers: on whole programs (eager and compiled), op by op
at the edges of the static ranges it derives, and its ranges hold every value a run produces."""

from __future__ import annotations

import pytest
import torch

from vitquant.integer import fast
from vitquant.integer.execute import IntegerModel
from vitquant.integer.fast import FAST_OPS, FastProgram, Inputs, Range
from vitquant.integer.ops import OPS, Context, pack_nibbles
from vitquant.kernels.arith import FLOAT, INT

from integer_cases import calibrated

CASES = ["w8a8-uniform", "w4a4-bitlog2", "w8a8-mixed", "w8a8-sqrt2", "w8a8-adalog", "w8a8-twin", "w8a8-distilled"]
STRICT = Context(INT)


def _strict(kind: str, args: list[torch.Tensor], consts: dict, attrs: dict | None = None) -> torch.Tensor:
    return OPS[kind]([a.to(torch.int64) for a in args], consts, attrs or {}, STRICT)


def _step(kind: str, args: list[torch.Tensor], ranges: list[Range], consts: dict, attrs: dict | None = None):
    op = Inputs(kind, tuple(a.shape for a in args), tuple(ranges), consts, attrs or {}, FLOAT)
    return FAST_OPS[kind](op)


def _assert_same(step, args: list[torch.Tensor], expected: torch.Tensor) -> None:
    got = step.run(*args)
    assert not got.is_floating_point()
    assert torch.equal(got.to(torch.int64), expected), (got.to(torch.int64) - expected).abs().max().item()
    if step.range is not None:
        assert step.range.lo <= int(expected.min()) and int(expected.max()) <= step.range.hi


def test_every_op_has_a_fast_step():
    assert set(FAST_OPS) == set(OPS)


@pytest.mark.parametrize("case", CASES)
def test_fast_run_equals_the_strict_run(case):
    _, _, program, _, images = calibrated(case)
    strict = IntegerModel(program).run(images)
    model = IntegerModel(program, gemm="float")
    for batch in (images, images[:3], images):  # prepared once per image shape, any batch size
        assert torch.equal(model.run(batch), strict[: batch.shape[0]])


@pytest.mark.parametrize("case", CASES)
def test_static_ranges_hold_every_value_and_no_op_falls_back(case):
    """Each op's derived range contains its output on real images (so the float plans, lookups and
    unchecked kernels that rely on it are exact), and every op of a converted program gets one."""
    _, _, program, _, images = calibrated(case)
    model = IntegerModel(program, gemm="float")
    x = model.quantize_input(images).to(torch.int32)
    prepared, _ = model._fast.prepare(x)
    env = {"input": x}
    for step, inputs, output, _ in prepared.steps:
        out = step.run(*[env[n] for n in inputs])
        env[output] = out
        assert step.range is not None, output
        assert step.range.lo <= int(out.min()) and int(out.max()) <= step.range.hi, output
        assert out.dtype == fast.storage(step.range)


def test_fast_requant_equals_the_shifts_at_ties_and_at_the_bound():
    """round(x·(m·2^-s)) in float64 gives the shifts' integers: ties of every parity, both signs, per-channel
    multipliers of up to 31 bits, and |x|·m just below 2^52; at 2^52 the strict shifts run instead."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randint(2**30, 2**31, (64,), generator=gen)
    m[:4] = torch.tensor([1, 3, 2**31 - 1, 2**30])
    shift = torch.randint(0, 40, (64,), generator=gen)
    a = (2**52 - 1) // int(m.max())  # the largest input bound the float path takes
    x = torch.randint(-a, a + 1, (100, 64), generator=gen)
    tie = torch.where(shift > 0, 1 << (shift - 1).clamp(min=0), 0)  # x·m/2^s ends in .5 for odd m
    x[0] = torch.where(tie <= a, tie, 0)
    x[1] = -x[0]
    x[2], x[3] = a, -a
    consts = {"multiplier": m, "shift": shift, "low": torch.tensor(-(2**62)), "high": torch.tensor(2**62)}
    step = _step("requant", [x], [Range.within(a)], consts)
    assert step.fuses
    _assert_same(step, [x], _strict("requant", [x], consts))
    wide = _step("requant", [x], [Range.within(a + 1)], consts)
    assert not wide.fuses and wide.range is None
    _assert_same(wide, [x], _strict("requant", [x], consts))
    clamp = {**consts, "low": torch.tensor(-5), "high": torch.tensor(2**20)}
    _assert_same(_step("requant", [x], [Range.within(a)], clamp), [x], _strict("requant", [x], clamp))


def _extreme_inputs(gen: torch.Generator, r: Range, shape: tuple[int, ...]) -> torch.Tensor:
    """Integers in r with rows all at lo, all at hi, and alternating (where partial sums peak)."""
    x = torch.randint(r.lo, r.hi + 1, shape, generator=gen)
    x[0, 0], x[0, 1] = r.lo, r.hi
    x[0, 2] = torch.where(torch.arange(shape[-1]) % 2 == 0, r.lo, r.hi)
    return x


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("bits, r", [(8, Range(-128, 127)), (8, Range(-20, 235)), (4, Range(-3, 12)), (8, Range(-1000, 1000))])
def test_fast_linear_equals_the_strict_linear_at_the_extremes(monkeypatch, int8, bits, r):
    """The int8 GEMM (where it fits) or the float plans (single float32 GEMM with the bias inside, or
    chunks), weights at both ends of their rows' code ranges, packed 4-bit weights."""
    if not int8:
        monkeypatch.setattr(fast, "int8_gemm_available", lambda: False)
    gen = torch.Generator().manual_seed(bits)
    k, n = 200, 5
    top = 2**bits - 1
    codes = torch.randint(0, top + 1, (n, k), generator=gen)
    codes[0], codes[1], codes[2] = 0, top, torch.where(torch.arange(k) % 2 == 0, 0, top)
    zero = torch.tensor([0, top, top // 2, 3, top - 1])
    consts = {"weight_codes": codes.to(torch.uint8), "weight_zero": zero, "bias": torch.tensor([0, 9, -2**20, 5, 1])}
    attrs = {}
    if bits == 4:
        consts["weight_codes"], attrs = pack_nibbles(codes), {"packed": 4, "in_features": k}
    x = _extreme_inputs(gen, r, (2, 3, k))
    step = _step("linear", [x], [r], consts, attrs)
    _assert_same(step, [x], _strict("linear", [x], consts, attrs))


@pytest.mark.parametrize("k, a, b", [(1024, 127, 128), (1023, 128, 128), (1025, 128, 128), (64, 2**12, 2**12)])
def test_fast_matmul_is_exact_across_the_plans(k, a, b):
    """K·A·B below 2^24 (one float32 GEMM: 1024·127·128 and 1023·128·128), above it (1025·128·128: chunks),
    A·B = 2^24 (float64); one output reaches K·A·B exactly."""
    gen = torch.Generator().manual_seed(k)
    x = _extreme_inputs(gen, Range.within(a), (3, 4, k))
    y = _extreme_inputs(gen, Range.within(b), (3, 5, k))
    y[0, 0] = torch.where(torch.arange(k) % 2 == 0, -b, b)  # x[0, 2] · y[0, 0] = K·A·B
    step = _step("matmul", [x, y], [Range.within(a), Range.within(b)], {}, {"transpose_b": True})
    assert step.range.hi == k * a * b
    assert int(step.run(x, y).max()) == k * a * b
    _assert_same(step, [x, y], _strict("matmul", [x, y], {}, {"transpose_b": True}))


def test_gelu_table_covers_an_asymmetric_range():
    r = Range(-200, 55)
    x = torch.arange(r.lo, r.hi + 1).reshape(1, -1)
    consts, attrs = {"scale": torch.tensor(0.03, dtype=torch.float64)}, {"family": "ibert", "out_bits": 8}
    step = _step("gelu", [x], [r], consts, attrs)
    _assert_same(step, [x], OPS["gelu"]([x], consts, attrs, STRICT))
    assert step.range.hi < 200 * 2**20  # the table's largest value, not the kernel's at +200


def test_bitlog2_and_table_av_equal_the_strict_ops():
    """The tabulated levels and one GEMM against the strict bit planes and table lookups, y over its range."""
    from vitquant.integer.convert import level_table
    from vitquant.quantizers import LogSqrt2Quantizer

    gen = torch.Generator().manual_seed(0)
    y_range, v_range = Range(0, 2**8), Range(-128, 127)
    y = _extreme_inputs(gen, y_range, (2, 3, 5, 9))
    v = _extreme_inputs(gen, v_range, (2, 3, 9, 4))
    attrs = {"int_max": 2**16, "half": True, "frac_bits": 8}
    _assert_same(_step("bitlog2_av", [y, v], [y_range, v_range], {}, attrs), [y, v],
                 OPS["bitlog2_av"]([y, v], {}, attrs, STRICT))
    q = LogSqrt2Quantizer(4, 17, torch.tensor([0.9, 0.31, 1.0]).reshape(3, 1, 1))
    thresholds, levels, _, _ = level_table(q, 3, 2.0**-8, y_range.hi, "test")
    consts = {"thresholds": thresholds, "levels": levels}
    _assert_same(_step("table_av", [y, v], [y_range, v_range], consts), [y, v], OPS["table_av"]([y, v], consts, {}, STRICT))


@pytest.mark.parametrize("out_bits", [8, 16])
@pytest.mark.parametrize("scales", [[2e-4, 0.01, 1e-9], [0.05]])
def test_ibert_softmax_table_equals_the_strict_softmax(scales, out_bits):
    """The tabulated i-exp against the strict I-BERT softmax: per-head scales with rounding shifts r = 0
    and r > 0 (up to 2^40 logit units clamped), inputs at ±(2^40 - 1), equal rows, one-element rows."""
    gen = torch.Generator().manual_seed(out_bits)
    a = 2**40 - 1
    heads = len(scales)
    for n, bound in ((9, a), (1, a), (7, 2**20)):
        r = Range.within(bound)
        x = torch.randint(-bound, bound + 1, (2, heads, 5, n), generator=gen)
        x[0, :, 0], x[0, :, 1] = -bound, bound
        x[0, :, 2] = torch.where(torch.arange(n) % 2 == 0, -bound, bound)
        x[1, :, 0] = torch.randint(-3000, 1, (heads, n), generator=gen)  # a dense run of Δ values
        consts = {"scale": torch.tensor(scales, dtype=torch.float64)}
        attrs = {"family": "ibert", "out_bits": out_bits}
        step = _step("softmax", [x], [r], consts, attrs)
        assert step.fuses and step.range == Range(0, 2**out_bits)
        _assert_same(step, [x], OPS["softmax"]([x], consts, attrs, STRICT))
    wide = _step("softmax", [x], [Range.within(2**40)], consts, attrs)  # beyond the kernel's input limit
    assert not wide.fuses


def test_compiled_run_equals_the_strict_run(compiled_run):
    """torch.compile of the prepared steps (inductor's fused loops, float64 kernels, in-place ops) gives the
    strict integers bit for bit: FQ-ViT softmax (in its compiled formulation) and LayerNorm, I-BERT GELU,
    BitLog2 attn@v. A smaller batch is padded, not compiled again. Run by ``compiled_run.py`` in a
    subprocess started at collection (``tests/conftest.py``), beside the rest of the suite."""
    if not compiled_run["available"]:
        pytest.skip("torch.compile is not available here")
    assert compiled_run["equal"]
    assert compiled_run["compile_seconds"] is not None and compiled_run["compile_seconds"] > 0
    assert compiled_run["padded_equal"] and not compiled_run["recompiled"]


def test_compile_needs_the_fast_executor():
    _, _, program, _, _ = calibrated("w8a8-uniform")
    with pytest.raises(Exception, match="gemm='float'"):
        IntegerModel(program, compile=True)
    assert isinstance(IntegerModel(program, gemm="float")._fast, FastProgram)
