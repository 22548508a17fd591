"""The fast executor: each op of a program prepared once, with exact float arithmetic where static bounds
allow it; the same integers as the strict int64 ops (tests compare them on whole programs and at the bounds).

A program is prepared op by op on its first input (:class:`FastProgram`): each op receives its inputs'
shapes and static bounds and returns a :class:`Step`, a function of the input tensors that runs tensor
operations only, and the bound on its output. A static bound ``|value| <= bound`` is derived from the
program's constants and shapes, never from the data:

    input                   max(z, 2^b - 1 - z)          (the image quantizer's codes)
    requant                 max(|lo|, |hi|)               (its clamp)
    linear                  A·max_o Σ_i |W_oi| + max|b|
    matmul                  K·A·B                         (K contracted, A and B the operands' bounds)
    softmax/gelu/layernorm  the kernel's output bound (GELU: the largest entry of its table)
    attn@v (tables)         K·max|level|·B
    layout ops, add         the input's bound, the sum of the bounds
    window_bias, sum_tokens the input's plus the bias's range, N times the input's

With these bounds every step is exact:

- GEMMs follow :func:`~vitquant.kernels.gemm.exact_float_plan` (float32 while every partial sum stays
  below 2^24), with the weights converted once and the bias added inside the GEMM when K·A·B + max|b| is
  below the plan's limit too;
- ``round(x·m/2^s)`` is ``round(x·(m·2^-s))`` in float64, exact while A·m < 2^52 (m·2^-s is m times a
  power of two and ``torch.round`` rounds ties to even like the shifts), then one clamp, in place;
- the integer kernels run prepared (:meth:`~vitquant.kernels.base.IntKernel.prepare`) on the float64
  arithmetic of the simulation twin (exact below 2^52, and vectorised where int64 division is not),
  without their input checks where the bound proves them;
- GELU and the attention-map levels of ``bitlog2_av`` and ``table_av`` (elementwise in the integer
  input, whose range is at most 2^17 values) are tabulated once over ``[-bound, bound]`` and looked up,
  and attn@v is one GEMM of the looked-up levels (the same products as the strict shifted sums); the
  I-BERT softmax's i-exp, a function of the reduced logit in ``[-2^15, 0]``, is tabulated likewise
  (:func:`ibert_softmax`);
- values are stored as int32 where the bound is below 2^31, and released after their last use.

An op whose input has no static bound (none in a converted program), or that has no fast version,
runs the strict op on int64. The steps have no Python branch on a value, so the prepared program can be
compiled (``torch.compile`` of chains of steps, :meth:`Prepared.compiled`: inductor fuses an op's
elementwise passes with those of the requantization after it into loops); compiled runs are tested
bit-identical too.
"""

from __future__ import annotations

import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vitquant.integer.ops import OPS, Context, StrictModeError, unpack_nibbles
from vitquant.integer.program import IntegerProgram
from vitquant.kernels.arith import FLOAT, INT, Arith
from vitquant.kernels.base import REDUCED_RANGE, SOFTMAX_INPUT_LIMIT, LogitReduction, PreparedKernel, make_kernel
from vitquant.kernels.gemm import (
    FloatPlan,
    Int8Linear,
    exact_float_plan,
    exact_limit,
    int8_gemm_available,
    planned_matmul,
    require_ieee_float32,
)
from vitquant.kernels.ibert import SOFTMAX_DIV_BITS, SOFTMAX_EXP_BITS, IntSoftmax, exp_constants, int_exp

#: |x|·m below this keeps round(x·(m·2^-s)) exact in float64
REQUANT_EXACT = 2**52
#: elementwise lookups tabulate inputs of magnitude below 2^16 (what the kernels accept)
TABLE_LIMIT = 2**16 + 1  # tabulate inputs with |x| <= 2^16: 16-bit kernel inputs, 16-bit softmax outputs (I-BERT: 0..2^16)
INT32_LIMIT = 2**31
STRICT = Context(INT, gemm="float")  # the ops run where a range is unknown
#: compiled graphs per op code (torch's default of 8 would send the later layers back to eager)
COMPILE_CACHE = torch._dynamo.config.patch(cache_size_limit=64)


@dataclass(frozen=True)
class Range:
    """The integers ``lo..hi`` a value may hold (a static bound, derived from constants and shapes)."""

    lo: int
    hi: int

    @classmethod
    def within(cls, bound: int) -> Range:
        return cls(-bound, bound)

    @classmethod
    def of(cls, t: torch.Tensor) -> Range:
        """The range of a constant tensor's values (0..0 when empty)."""
        return cls(int(t.min()), int(t.max())) if t.numel() else cls(0, 0)

    @property
    def bound(self) -> int:
        """max |value|."""
        return max(-self.lo, self.hi, 0)

    def __add__(self, other: Range) -> Range:
        return Range(self.lo + other.lo, self.hi + other.hi)

    def hull(self, other: Range) -> Range:
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))


@dataclass(frozen=True)
class Step:
    """One prepared op: ``run(*inputs)`` and the ``range`` of its output (None: not known statically).
    ``traceable``: ``run`` has no Python branch on a value (all but the strict ops); ``fuses``: it is a
    chain of element-wise passes that ``torch.compile`` fuses into a few loops (a GEMM, a sum or a
    reshape alone gains nothing from it)."""

    run: Callable[..., torch.Tensor]
    range: Range | None
    fuses: bool = False
    traceable: bool = True


@dataclass(frozen=True)
class Inputs:
    """What an op is prepared from: its kind, its inputs' shapes and static ranges, constants,
    attributes, and the arithmetic its integer kernels run on."""

    kind: str
    shapes: tuple[torch.Size, ...]
    ranges: tuple[Range | None, ...]
    consts: dict[str, torch.Tensor]
    attrs: dict[str, Any]
    arith: Arith

    def bound(self, i: int) -> int | None:
        """max |input i|, None where its range is unknown."""
        r = self.ranges[i]
        return None if r is None else r.bound


Prepare = Callable[[Inputs], Step]
FAST_OPS: dict[str, Prepare] = {}


def storage(r: Range | None) -> torch.dtype:
    """int32 for values of magnitude below 2^31, else int64."""
    return torch.int32 if r is not None and r.bound < INT32_LIMIT else torch.int64


def _fast(*kinds: str) -> Callable[[Prepare], Prepare]:
    def wrap(fn: Prepare) -> Prepare:
        for kind in kinds:
            FAST_OPS[kind] = fn
        return fn
    return wrap


def strict_step(op: Inputs) -> Step:
    """The strict op on int64 (gemm "float", bounds measured), for an op without static input ranges."""
    return Step(lambda *args: OPS[op.kind]([a.to(torch.int64) for a in args], op.consts, op.attrs, STRICT), None,
                traceable=False)


# ---------------------------------------------------------------------------------------- requantization


@_fast("requant")
def requant(op: Inputs) -> Step:
    """``clamp(round(x·(m·2^-s)), lo, hi)`` in float64, in place (exact while A·max(m) < 2^52)."""
    m, s, lo, hi = (op.consts[k] for k in ("multiplier", "shift", "low", "high"))
    a = op.bound(0)
    if a is None or a * int(m.max()) >= REQUANT_EXACT:
        return strict_step(op)
    ratio = m.to(torch.float64) * torch.exp2(-s.to(torch.float64))
    low, high = (t.item() if t.numel() == 1 else t.to(torch.float64) for t in (lo, hi))
    out_range = Range(int(lo.min()), int(hi.max()))
    out = storage(out_range)

    def run(x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float64, copy=True).mul_(ratio).round_()
        return y.clamp_(low, high).to(out)

    return Step(run, out_range, fuses=True)


# ---------------------------------------------------------------------------------------- products


def _plan(k: int, a: int, b: int, extra: int = 0) -> tuple[FloatPlan, bool]:
    """The exact float plan of K products of magnitude <= a·b, and whether it is one GEMM that may also
    add ``extra`` (a bias) inside: not chunked, and K·a·b + extra below the plan's limit."""
    plan = exact_float_plan(k, a, b)
    if plan.dtype == torch.float32:
        require_ieee_float32(torch.device("cpu"))
    return plan, plan.chunk >= k and k * a * b + extra < exact_limit(plan.dtype)


def matmul_step(k: int, a: int, b: int, out: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact ``x @ y`` for |x| <= a, |y| <= b over K products, returned as ``out``."""
    plan, single = _plan(k, a, b)
    if single:
        return lambda x, y: torch.matmul(x.to(plan.dtype), y.to(plan.dtype)).to(out)
    return lambda x, y: planned_matmul(x, y, plan).to(out)


@_fast("linear")
def linear(op: Inputs) -> Step:
    """``x @ Wᵀ + b``: one int8 GEMM where activations and weight rows fit int8 after a shift
    (:class:`~vitquant.kernels.gemm.Int8Linear`), else the exact float plan with the weights converted
    once and the bias inside the GEMM when the plan allows it."""
    codes = op.consts["weight_codes"]
    if op.attrs.get("packed") == 4:
        codes = unpack_nibbles(codes, int(op.attrs["in_features"]))
    weight = codes.to(torch.int64) - op.consts["weight_zero"].to(torch.int64).unsqueeze(1)
    bias = op.consts.get("bias")
    a = op.bound(0)
    if a is None:
        return strict_step(op)
    b_max = Range.of(bias).bound if bias is not None else 0
    row_sum = int(weight.abs().sum(dim=1).max()) if weight.numel() else 0
    out_range = Range.within(a * row_sum + b_max)
    out = storage(out_range)
    r = op.ranges[0]
    if int8_gemm_available() and Int8Linear.fits(weight, r.lo, r.hi):
        product = Int8Linear(weight, bias, r.lo, r.hi)
        return Step(lambda x: product(x).to(out), out_range)
    plan, single = _plan(weight.shape[1], a, Range.of(weight).bound, b_max)
    w = weight.to(plan.dtype)
    if single:
        bf = None if bias is None else bias.to(plan.dtype)
        return Step(lambda x: F.linear(x.to(plan.dtype), w, bf).to(out), out_range)
    wt, b64 = w.transpose(0, 1), None if bias is None else bias.to(torch.int64)
    if b64 is None:
        return Step(lambda x: planned_matmul(x, wt, plan).to(out), out_range)
    return Step(lambda x: planned_matmul(x, wt, plan).add_(b64).to(out), out_range)


@_fast("matmul")
def matmul(op: Inputs) -> Step:
    """``a @ b`` (``transpose_b``: ``a @ bᵀ``) by the exact float plan of its bounds."""
    a, b = op.bound(0), op.bound(1)
    if a is None or b is None:
        return strict_step(op)
    k = op.shapes[0][-1]
    out_range = Range.within(k * a * b)
    product = matmul_step(k, a, b, storage(out_range))
    if op.attrs.get("transpose_b"):
        return Step(lambda x, y: product(x, y.transpose(-2, -1)), out_range)
    return Step(product, out_range)


# ---------------------------------------------------------------------------------------- kernels


def _kernel_step(kernel: PreparedKernel, op: Inputs) -> Step:
    """A prepared kernel on ``op.arith``: unchecked when the input range proves ``|x| < input_limit``."""
    kernel.check_shape(tuple(op.shapes[0]))
    a = op.bound(0)
    proven = a is not None and a < kernel.input_limit
    fn = kernel.apply if proven else kernel
    out_range = Range.within(kernel.bound)
    arith, out = op.arith, storage(out_range)
    return Step(lambda x: fn(x.to(arith.dtype)).to(out), out_range, fuses=proven, traceable=proven)


def _family(op: Inputs, kind: str):
    options = {"out_bits": int(op.attrs["out_bits"])} if "out_bits" in op.attrs else {}
    return make_kernel(op.attrs["family"], kind, **options)


@_fast("softmax")
def softmax(op: Inputs) -> Step:
    kernel = _family(op, "softmax")
    if isinstance(kernel, IntSoftmax):
        step = ibert_softmax(kernel, op)
        if step is not None:
            return step
    return _kernel_step(kernel.prepare(op.consts["scale"], op.arith), op)


def ibert_softmax(kernel: IntSoftmax, op: Inputs) -> Step | None:
    """I-BERT softmax with its i-exp tabulated, on int64, for inputs ``|x| <= A < 2^40`` (None otherwise).

    The kernel reduces each row (:class:`~vitquant.kernels.base.LogitReduction`, per head):
    ``Δ = round(max(x - max_row x, -D) / 2^r)`` in ``[-2^15, 0]``, whose row maximum is 0 (the row's
    largest x gives 0, every other Δ is <= 0), so its ``e = i-exp(Δ - max Δ) = i-exp(Δ)`` depends on the
    integer Δ alone: it is tabulated once per head over the 2^15 + 1 values of Δ with the strict int64
    arithmetic (``e < 2^16``). Then, as the kernel, ``Σe < N·2^16 <= 2^32``, ``⌊2^40/Σe⌋`` and
    ``⌊e·⌊2^40/Σe⌋ / 2^(40-b)⌋`` (``e·⌊2^40/Σe⌋ <= 2^40``, as ``e <= Σe``) in int64; ``x - max_row x``
    stays below 2^41. The output is in ``0..2^b``."""
    a, shape = op.bound(0), tuple(op.shapes[0])
    scales = op.consts["scale"].to(torch.float64).reshape(-1)
    heads = scales.numel()
    if a is None or a >= SOFTMAX_INPUT_LIMIT or (heads > 1 and (len(shape) != 4 or shape[1] != heads)):
        return None
    kernel.prepare(op.consts["scale"], INT).check_shape(shape)  # the strict kernel's shape checks
    reductions = [LogitReduction.of(float(s)) for s in scales]
    delta = -torch.arange(REDUCED_RANGE + 1, dtype=torch.int64)  # Δ = 0, -1, ..., -2^15
    table = torch.stack([int_exp(delta, exp_constants(red.scale, SOFTMAX_EXP_BITS), INT) for red in reductions])
    width = REDUCED_RANGE + 1
    table = table.to(torch.int32).flatten()  # e < 2^16

    def per_head(values: list[int]) -> int | torch.Tensor:
        return values[0] if heads == 1 else torch.tensor(values, dtype=torch.int64).reshape(1, heads, 1, 1)

    low = per_head([-red.clamp for red in reductions])
    shift = per_head([red.shift for red in reductions])
    half = per_head([(1 << red.shift) >> 1 for red in reductions])  # 2^(r-1), 0 for r = 0
    offset = per_head([h * width for h in range(heads)])
    out_shift = SOFTMAX_DIV_BITS - kernel.out_bits

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.int64)
        d = torch.maximum(x - x.amax(dim=-1, keepdim=True), torch.as_tensor(low)) if heads > 1 else \
            torch.clamp(x - x.amax(dim=-1, keepdim=True), min=low)
        reduced = torch.bitwise_right_shift(d + half, shift)  # round(d / 2^r), ties up: in [-2^15, 0]
        e = torch.take(table, offset - reduced).to(torch.int64)
        factor = torch.div(torch.full_like(e[..., :1], 2**SOFTMAX_DIV_BITS), e.sum(dim=-1, keepdim=True),
                           rounding_mode="floor")
        return torch.bitwise_right_shift(e * factor, out_shift).to(torch.int32)

    return Step(run, Range(0, 2**kernel.out_bits), fuses=True)


@_fast("layernorm")
def layernorm(op: Inputs) -> Step:
    c = op.consts
    kernel = _family(op, "layernorm").prepare(c["scale"], op.arith, c["weight"], c["bias"], op.shapes[0][-1])
    return _kernel_step(kernel, op)


def _tabulable(r: Range | None) -> bool:
    return r is not None and r.bound < TABLE_LIMIT


def lookup(table: torch.Tensor, x: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
    """``table.flatten()[x + offset]``: an elementwise function tabulated over its input range."""
    return torch.take(table, x.to(torch.int64) + offset)


@_fast("gelu")
def gelu(op: Inputs) -> Step:
    """GELU tabulated once over the input range ``lo..hi`` (the kernel is elementwise), then looked up."""
    r = op.ranges[0]
    if not _tabulable(r):
        return strict_step(op)
    kernel = _family(op, "gelu").prepare(op.consts["scale"], op.arith)
    table = kernel(torch.arange(r.lo, r.hi + 1, dtype=torch.int64).to(op.arith.dtype)).to(torch.int64)
    out_range = Range.of(table)
    table = table.to(storage(out_range))
    return Step(lambda x: lookup(table, x, -r.lo), out_range, fuses=True)


@_fast("lookup")
def table_lookup(op: Inputs) -> Step:
    """The op's own table, looked up (the strict op where the input's range is not within it)."""
    table, low = op.consts["table"], int(op.attrs["low"])
    r = op.ranges[0]
    if r is None or r.lo < low or r.hi >= low + table.numel():
        return strict_step(op)
    out_range = Range.of(table)
    table = table.to(storage(out_range))
    return Step(lambda x: lookup(table, x, -low), out_range, fuses=True)


# ---------------------------------------------------------------------------------------- attn @ v


def _levels_av(op: Inputs, table: torch.Tensor) -> Step:
    """``L[h, y] @ v``: the attention map's integer level of each probability integer y (``table`` [H or
    1, hi - lo + 1] over the range of y), looked up, then one exact GEMM with v."""
    r, v_bound, k = op.ranges[0], op.bound(1), op.shapes[0][-1]
    level_max = Range.of(table).bound
    out_range = Range.within(k * level_max * v_bound)
    heads, width = table.shape
    offset = -r.lo + width * torch.arange(heads, dtype=torch.int64).reshape(1, heads, 1, 1) if heads > 1 else -r.lo
    product = matmul_step(k, level_max, v_bound, storage(out_range))
    return Step(lambda y, v: product(lookup(table, y, offset), v), out_range, fuses=True)


@_fast("bitlog2_av")
def bitlog2_av(op: Inputs) -> Step:
    """BitLog2 attn@v: ``D(x_int(y))`` tabulated over y, then ``D @ v`` (equal to the strict op's
    shifted sums of bit planes: the same exact products)."""
    r = op.ranges[0]
    if not _tabulable(r) or op.ranges[1] is None:
        return strict_step(op)
    from vitquant.quantizers.bitlog2 import dequant_int

    int_max, half, frac = int(op.attrs["int_max"]), bool(op.attrs["half"]), int(op.attrs["frac_bits"])
    y = torch.arange(r.lo, r.hi + 1, dtype=torch.int64)
    x_int = torch.clamp(torch.bitwise_right_shift(y * int_max, frac), 0, int_max - 1)
    return _levels_av(op, dequant_int(x_int, half).reshape(1, -1))


@_fast("table_av")
def table_av(op: Inputs) -> Step:
    """Table attn@v: each head's level of y (thresholds counted, levels looked up) tabulated over y."""
    r = op.ranges[0]
    if not _tabulable(r) or op.ranges[1] is None:
        return strict_step(op)
    thresholds, levels = op.consts["thresholds"].to(torch.int64), op.consts["levels"].to(torch.int64)
    y = torch.arange(r.lo, r.hi + 1, dtype=torch.int64)
    codes = torch.stack([torch.searchsorted(thresholds[h], y, right=True) for h in range(thresholds.shape[0])])
    return _levels_av(op, torch.gather(levels, 1, codes))


# ---------------------------------------------------------------------------------------- layout and sums


@_fast("patchify", "heads", "merge_heads", "take_token", "roll", "window_partition", "window_reverse", "patch_merge")
def layout(op: Inputs) -> Step:
    """Reshapes and selections: the strict op itself (no arithmetic), the input's range."""
    return Step(lambda x: OPS[op.kind]([x], op.consts, op.attrs, STRICT), op.ranges[0])


@_fast("prepend_token")
def prepend_token(op: Inputs) -> Step:
    token = op.consts["token"]
    out_range = None if op.ranges[0] is None else op.ranges[0].hull(Range.of(token))
    out = storage(out_range)
    token = token.to(out)
    return Step(lambda x: torch.cat([token.expand(x.shape[0], -1, -1), x.to(out)], dim=1), out_range)


def _add_constant(op: Inputs, add: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Step:
    """``add(x, value)`` of the op's constant ``value``, both in the storage dtype of the output range."""
    value = op.consts["value"]
    out_range = None if op.ranges[0] is None else op.ranges[0] + Range.of(value)
    out = storage(out_range)
    value = value.to(out)
    return Step(lambda x: add(x.to(out), value), out_range)


@_fast("add_const")
def add_const(op: Inputs) -> Step:
    return _add_constant(op, torch.add)


@_fast("window_bias")
def window_bias(op: Inputs) -> Step:
    """The per-window logit bias of Swin (relative position bias and shift mask on the q·kᵀ grid)."""
    return _add_constant(op, lambda x, value: (x.reshape(-1, *value.shape) + value).reshape(x.shape))


@_fast("sum_tokens")
def sum_tokens(op: Inputs) -> Step:
    """``Σ_n x[:, n]`` in int64 (exact), stored as its range allows."""
    r, n = op.ranges[0], op.shapes[0][1]
    out_range = None if r is None else Range(n * r.lo, n * r.hi)
    out = storage(out_range)
    return Step(lambda x: x.to(torch.int64).sum(dim=1).to(out), out_range)


@_fast("add")
def add(op: Inputs) -> Step:
    a, b = op.ranges
    out_range = None if a is None or b is None else a + b
    out = storage(out_range)
    return Step(lambda x, y: x.to(out) + y.to(out), out_range)


# ---------------------------------------------------------------------------------------- the program


@dataclass(frozen=True)
class Prepared:
    """A program's steps for one input shape: (step, input names, output name, names released after it)."""

    steps: tuple[tuple[Step, tuple[str, ...], str, tuple[str, ...]], ...]

    def compiled(self) -> Prepared:
        """The same program with its chains compiled by ``torch.compile``: a chain is a run of traceable
        steps, each reading the previous one's output, the only reader of it (requantizations join the
        op before them, a kernel the requantization after it, ...), compiled as one graph (a lone step
        only when it fuses). Chains of the same ops share their code, so the layers share compiled graphs."""
        steps = []
        for group in self._chains():
            first, last = self.steps[group[0]], self.steps[group[-1]]
            if len(group) == 1 and not first[0].fuses:
                steps.append(first)
                continue
            internal = {self.steps[i][2] for i in group[:-1]}
            external = list(dict.fromkeys(n for i in group for n in self.steps[i][1] if n not in internal))
            links = tuple((self.steps[i][0], tuple(None if n in internal else external.index(n) for n in self.steps[i][1]))
                          for i in group)
            release = tuple(n for i in group for n in self.steps[i][3] if n not in internal)
            run = torch.compile(chain(links), fullgraph=True)
            steps.append((Step(run, last[0].range), tuple(external), last[2], release))
        return Prepared(tuple(steps))

    def _chains(self) -> list[list[int]]:
        readers = Counter(name for _, inputs, _, _ in self.steps for name in inputs)
        groups: list[list[int]] = []
        for i, (step, inputs, _, _) in enumerate(self.steps):
            if groups and step.traceable and self.steps[groups[-1][-1]][0].traceable:
                previous = self.steps[groups[-1][-1]][2]
                if previous in inputs and readers[previous] == 1 and inputs.count(previous) == 1:
                    groups[-1].append(i)
                    continue
            groups.append([i])
        return groups

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        env = {"input": x}
        for step, inputs, output, release in self.steps:
            out = step.run(*[env[name] for name in inputs])
            if out.is_floating_point():
                raise StrictModeError(f"{output} produced a {out.dtype} tensor in an integer-only run")
            env[output] = out
            for name in release:
                del env[name]
        return env["logits"].to(torch.int64)


#: one code object per chain structure (see :func:`chain`)
_CHAIN_CODES: dict[tuple, types.CodeType] = {}


def chain(links: tuple[tuple[Step, tuple[int | None, ...]], ...]) -> Callable[..., torch.Tensor]:
    """One function running steps in order; a step's input ``None`` is the previous step's output, an
    int the index of the function's argument.

    ``torch.compile`` keeps its graphs per code object and, when a call misses them, recompiles with
    the sizes that changed since the last call made dynamic. The function's code object is therefore
    one per chain *structure* (its steps' code and wiring): the chains of different layers that match
    share compiled graphs, while chains of other ops, with other shapes, do not turn the shapes of
    these graphs dynamic (slower kernels)."""

    def run(*args: torch.Tensor) -> torch.Tensor:
        out = None
        for step, inputs in links:
            out = step.run(*[out if i is None else args[i] for i in inputs])
        return out

    key = tuple((getattr(step.run, "__code__", step.run), inputs) for step, inputs in links)
    code = _CHAIN_CODES.get(key)
    if code is None:
        code = _CHAIN_CODES[key] = run.__code__.replace(co_name=f"chain_{len(_CHAIN_CODES)}")
    return types.FunctionType(code, run.__globals__, code.co_name, None, run.__closure__)


def releases(program: IntegerProgram) -> list[tuple[str, ...]]:
    """Per op, the values read for the last time by it (the logits are kept)."""
    last_use = {name: i for i, op in enumerate(program.ops) for name in op.inputs}
    out: list[list[str]] = [[] for _ in program.ops]
    for name, i in last_use.items():
        if name != "logits":
            out[i].append(name)
    return [tuple(r) for r in out]


class FastProgram:
    """A program prepared for the fast executor, per input shape (prepared on the first input of each
    shape, from its shapes only); with ``compile`` each prepared program is compiled by ``torch.compile``
    (``compile_seconds``: the time of its first, compiling, run)."""

    def __init__(self, program: IntegerProgram, consts: dict[str, torch.Tensor], kernel_arith: Arith = FLOAT,
                 compile: bool = False) -> None:
        self.program = program
        self.consts = consts
        self.kernel_arith = kernel_arith
        self.compile = compile
        self.compile_seconds: float | None = None
        self._prepared: dict[tuple[int, ...], tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {}

    @property
    def input_range(self) -> Range:
        """The image quantizer's integers ``-z..2^b - 1 - z``."""
        p = self.program
        return Range(-p.input_zero_point, 2**p.input_bits - 1 - p.input_zero_point)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Integer logits (int64). Runs in inference mode whatever the caller's, so that compiled graphs see
        one global state; compiled, a smaller batch than the first is padded with zero images (each image
        is computed on its own, so the others' logits do not change) instead of compiled again."""
        with torch.inference_mode(), COMPILE_CACHE:
            x = x.to(storage(self.input_range))
            key = tuple(x.shape[1:])
            if key in self._prepared:
                fn, batch = self._prepared[key]
                if self.compile and x.shape[0] < batch:
                    return fn(torch.cat([x, x.new_zeros((batch - x.shape[0], *key))]))[: x.shape[0]]
                return fn(x)
            prepared, out = self.prepare(x)
            if not self.compile:
                self._prepared[key] = (prepared, x.shape[0])
                return out
            compiled = prepared.compiled()
            start = time.perf_counter()
            out = compiled(x)
            self.compile_seconds = time.perf_counter() - start
            self._prepared[key] = (compiled, x.shape[0])
            return out

    def prepare(self, x: torch.Tensor) -> tuple[Prepared, torch.Tensor]:
        """The prepared program for inputs shaped like ``x``, and its output on ``x`` (each op is prepared
        from the shapes its predecessors produced on ``x``)."""
        p = self.program
        values = {"input": x}
        ranges: dict[str, Range | None] = {"input": self.input_range}
        steps = []
        for op, release in zip(p.ops, releases(p)):
            consts = {role: self.consts[name] for role, name in op.constants.items()}
            args = [values[n] for n in op.inputs]
            inputs = Inputs(op.kind, tuple(a.shape for a in args), tuple(ranges[n] for n in op.inputs), consts,
                            op.attrs, self.kernel_arith)
            step = FAST_OPS.get(op.kind, strict_step)(inputs)  # no fast version: the strict op
            values[op.output] = step.run(*args)
            ranges[op.output] = step.range
            steps.append((step, op.inputs, op.output, release))
            for name in release:
                del values[name]
        return Prepared(tuple(steps)), values["logits"].to(torch.int64)
