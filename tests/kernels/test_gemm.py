"""Exact integer matmuls: both backends equal Python's integer products, including at the bounds where
partial sums peak; the float plan's boundaries; the float32 rounding the plan avoids."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError, DtypeError, RangeError
from vitquant.kernels import exact_float_plan, int_linear, int_matmul
from vitquant.kernels.gemm import FLOAT32_EXACT, FLOAT64_EXACT, Int8Linear, int8_gemm_available

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ["int", "float"]
F32, F64 = torch.float32, torch.float64


def _ints(gen: torch.Generator, shape: tuple[int, ...], lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """Uniform integers in [lo, hi], with lo and hi planted at the first two positions."""
    t = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64)
    t.view(-1)[:2] = torch.tensor([lo, hi])[: t.numel()]
    return t.to(dtype)


def _python_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The obvious reference: 2-D products summed as Python integers."""
    rows, cols = a.tolist(), b.T.tolist()
    return torch.tensor([[sum(x * y for x, y in zip(r, c)) for c in cols] for r in rows], dtype=torch.int64)


def _f64_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference for large shapes: float64 matmul, exact while K·A·B < 2^53 (asserted by the caller)."""
    return torch.matmul(a.to(F64), b.to(F64)).to(torch.int64)


def _assert_exact(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == torch.int64
    assert got.shape == expected.shape
    assert torch.equal(got, expected), (got - expected).abs().max().item()


# --- the plan ------------------------------------------------------------------------------------


def test_plan_boundaries_float32():
    # K·A·B = 2^24 - 1 = 4095 · 17 · 241: one float32 GEMM
    assert exact_float_plan(4095, 17, 241) == (F32, 4095)
    # K·A·B = 2^24: chunks of floor((2^24 - 1) / 2^14) = 1023 products
    assert exact_float_plan(1024, 128, 128) == (F32, 1023)
    # A·B = 2^24 - 1 = 4095 · 4097: still float32, one product per chunk
    assert exact_float_plan(2, 4095, 4097) == (F32, 1)
    assert exact_float_plan(1, 4095, 4097) == (F32, 1)
    # empty contraction and zero bounds: one GEMM
    assert exact_float_plan(0, 2**40, 2**40) == (F32, 0)
    assert exact_float_plan(10**9, 0, 2**60) == (F32, 10**9)


def test_plan_boundaries_float64_and_refusal():
    # A·B = 2^24: no float32 chunk holds a product; float64
    assert exact_float_plan(5, 2**12, 2**12) == (F64, 5)
    # K·A·B = 2^53 - 2^24 < 2^53: one float64 GEMM; K·A·B = 2^53: float64 chunks
    assert exact_float_plan(2**29 - 1, 2**12, 2**12) == (F64, 2**29 - 1)
    assert exact_float_plan(2**29, 2**12, 2**12) == (F64, 2**29 - 1)
    # A·B = 2^53 - 1 = 6361 · 69431 · 20394401: one product per float64 GEMM
    assert exact_float_plan(3, 6361 * 69431, 20394401) == (F64, 1)
    with pytest.raises(RangeError, match="2\\^53"):
        exact_float_plan(1, 2**26, 2**27)  # A·B = 2^53
    for bad in ((-1, 1, 1), (1, -1, 1), (1, 1, -1)):
        with pytest.raises(ConfigError):
            exact_float_plan(*bad)


@pytest.mark.parametrize("seed", range(3))
def test_plan_chunk_is_the_largest_exact_one(seed):
    """chunk · A·B < 2^p <= (chunk + 1) · A·B whenever the plan splits K; refused when A·B >= 2^53."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(500):
        k, a, b = (int(v) for v in torch.exp2(torch.rand(3, generator=gen, dtype=F64) * torch.tensor([16.0, 30, 30])))
        if a * b >= FLOAT64_EXACT:
            with pytest.raises(RangeError):
                exact_float_plan(k, a, b)
            continue
        dtype, chunk = exact_float_plan(k, a, b)
        limit = FLOAT32_EXACT if dtype == F32 else FLOAT64_EXACT
        assert dtype == F32 or a * b >= FLOAT32_EXACT
        assert min(chunk, k) * a * b < limit
        assert chunk >= k or (chunk + 1) * a * b >= limit


# --- why the bound: float32 rounds integers beyond 2^24 -------------------------------------------


def test_float32_loses_sums_beyond_the_bound():
    assert (torch.tensor(2**24, dtype=F32) + 1).item() == 2**24  # 2^24 + 1 rounds back to 2^24
    k, bound = 2000, 127  # products 127² = 16129 (odd); K·A·B ≈ 1.9 · 2^24
    a = torch.full((1, k), bound, dtype=torch.int8)
    b = torch.full((k, 1), bound, dtype=torch.int8)
    exact = k * bound * bound
    chunk = exact_float_plan(k, bound, bound).chunk
    assert chunk == (2**24 - 1) // bound**2 == 1040
    # one float32 GEMM over all of K is wrong; over one more product than the chunk too (odd sum > 2^24)
    assert (a.float() @ b.float()).item() != exact
    assert (a[:, : chunk + 1].float() @ b[: chunk + 1].float()).item() != (chunk + 1) * bound**2
    assert (a[:, :chunk].float() @ b[:chunk].float()).item() == chunk * bound**2
    for backend in BACKENDS:
        _assert_exact(int_matmul(a, b, backend=backend), torch.tensor([[exact]]))


# --- exactness -----------------------------------------------------------------------------------

RANGES = [  # (a range, a dtype, b range, b dtype): 8-bit x 4-bit, unsigned x signed, 3-bit, 16-bit
    ((-128, 127), torch.int8, (-8, 7), torch.int8),
    ((0, 255), torch.uint8, (-128, 127), torch.int8),
    ((-4, 3), torch.int32, (0, 7), torch.int64),
    ((-(2**15), 2**15 - 1), torch.int16, (-(2**15), 2**15 - 1), torch.int32),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 37, 1100])
@pytest.mark.parametrize("ranges", RANGES, ids=["s8xs4", "u8xs8", "s3xu3", "s16xs16"])
def test_random_matches_python(backend, k, ranges):
    (alo, ahi), adt, (blo, bhi), bdt = ranges
    gen = torch.Generator().manual_seed(k)
    a = _ints(gen, (6, k), alo, ahi, adt)
    b = _ints(gen, (k, 5), blo, bhi, bdt)
    _assert_exact(int_matmul(a, b, backend=backend), _python_matmul(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signs", ["++", "-+", "--", "alternating"])
def test_extremes_over_several_chunks(backend, signs):
    """Every entry at ±bound: partial sums reach K·A·B, the worst case of the bound (4 float32 chunks)."""
    k, a_max, b_max = 1800, 255, 127
    assert exact_float_plan(k, a_max, b_max) == (F32, 518)
    a = torch.full((3, k), a_max, dtype=torch.int32)
    b = torch.full((k, 2), b_max, dtype=torch.int32)
    if signs[0] == "-":
        a = -a
    if signs[1] == "-":
        b = -b
    if signs == "alternating":
        b[1::2] *= -1
    expected = _python_matmul(a, b)
    for bounds in ((None, None), (a_max, b_max)):
        got = int_matmul(a, b, backend=backend, a_bound=bounds[0], b_bound=bounds[1])
        _assert_exact(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_bounds_larger_than_the_data(backend):
    """A looser declared bound only changes the plan (here: from one GEMM to 2^k chunks), not the result."""
    gen = torch.Generator().manual_seed(5)
    a = _ints(gen, (4, 300), -3, 3, torch.int8)
    b = _ints(gen, (300, 4), -3, 3, torch.int8)
    got = int_matmul(a, b, backend=backend, a_bound=2**11, b_bound=2**11)
    _assert_exact(got, _python_matmul(a, b))


def test_int8_products_do_not_wrap():
    a = torch.full((2, 3), 100, dtype=torch.int8)
    b = torch.full((3, 2), -100, dtype=torch.int8)
    assert not torch.equal(torch.matmul(a, b).long(), torch.full((2, 2), -30000))  # torch keeps int8
    for backend in BACKENDS:
        _assert_exact(int_matmul(a, b, backend=backend), torch.full((2, 2), -30000))


DEIT_TINY = {  # batch 2; name: (a shape, a range, a dtype, b shape, b range, b dtype)
    "qkv 197x192 @ 192x576, w4": ((2, 197, 192), (-128, 127), torch.int8, (192, 576), (-8, 7), torch.int8),
    "fc2 197x768 @ 768x192, u8 x w8": ((2, 197, 768), (0, 255), torch.uint8, (768, 192), (-128, 127), torch.int8),
    "q @ kT": ((2, 3, 197, 64), (-128, 127), torch.int8, (2, 3, 64, 197), (-128, 127), torch.int8),
    "attn @ v": ((2, 3, 197, 197), (0, 255), torch.uint8, (2, 3, 197, 64), (-128, 127), torch.int8),
}


@pytest.mark.parametrize("case", DEIT_TINY)
def test_deit_tiny_shapes(case):
    a_shape, (alo, ahi), adt, b_shape, (blo, bhi), bdt = DEIT_TINY[case]
    gen = torch.Generator().manual_seed(len(case))
    a = _ints(gen, a_shape, alo, ahi, adt)
    b = _ints(gen, b_shape, blo, bhi, bdt)
    assert a_shape[-1] * max(-alo, ahi) * max(-blo, bhi) < FLOAT64_EXACT
    expected = _f64_matmul(a, b)
    _assert_exact(int_matmul(a, b, backend="int"), expected)
    _assert_exact(int_matmul(a, b, backend="float"), expected)
    _assert_exact(int_matmul(a, b, backend="float", a_bound=max(-alo, ahi), b_bound=max(-blo, bhi)), expected)
    if b.dim() == 2:  # a Linear layer: weights stored [out, in]
        _assert_exact(int_linear(a, b.T.contiguous(), backend="float"), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "a_shape,b_shape", [((2, 1, 4, 3000), (3, 3000, 6)), ((3000,), (3000, 6)), ((4, 3000), (3000,)), ((3000,), (3000,))]
)
def test_broadcast_and_vectors_over_chunks(backend, a_shape, b_shape):
    gen = torch.Generator().manual_seed(7)
    a = _ints(gen, a_shape, -127, 127, torch.int8)
    b = _ints(gen, b_shape, -127, 127, torch.int8)
    assert exact_float_plan(3000, 127, 127).chunk < 3000
    _assert_exact(int_matmul(a, b, backend=backend), _f64_matmul(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_operands(backend):
    a, b = torch.zeros(3, 0, dtype=torch.int8), torch.zeros(0, 4, dtype=torch.int8)
    _assert_exact(int_matmul(a, b, backend=backend), torch.zeros(3, 4, dtype=torch.int64))
    _assert_exact(int_matmul(torch.zeros(0, 5, dtype=torch.int8), torch.ones(5, 2, dtype=torch.int8)),
                  torch.zeros(0, 2, dtype=torch.int64))


# --- int_linear ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [50, 1200])
def test_linear_with_bias(backend, k):
    gen = torch.Generator().manual_seed(k)
    x = _ints(gen, (3, 4, k), 0, 255, torch.uint8)
    w = _ints(gen, (6, k), -127, 127, torch.int8)
    bias = _ints(gen, (6,), -(2**30), 2**30, torch.int32)
    expected = _python_matmul(x.reshape(12, k), w.T).reshape(3, 4, 6) + bias.long()
    _assert_exact(int_linear(x, w, bias, backend=backend), expected)
    _assert_exact(int_linear(x, w, backend=backend, x_bound=255, w_bound=127), expected - bias.long())


def test_linear_rejects_bad_weights_and_bias():
    x = torch.ones(2, 3, dtype=torch.int8)
    with pytest.raises(ConfigError, match="\\[out, in\\]"):
        int_linear(x, torch.ones(3, dtype=torch.int8))
    with pytest.raises(DtypeError, match="bias"):
        int_linear(x, torch.ones(4, 3, dtype=torch.int8), torch.zeros(4))
    with pytest.raises(DtypeError, match="w"):
        int_linear(x, torch.ones(4, 3))


# --- rejected inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_and_non_tensor_inputs_rejected(backend):
    ints = torch.ones(2, 2, dtype=torch.int8)
    for a, b in ((ints.float(), ints), (ints, ints.double()), (ints.bool(), ints), (ints, [[1, 1], [1, 1]])):
        with pytest.raises(DtypeError, match="integer tensors"):
            int_matmul(a, b, backend=backend)
    assert issubclass(DtypeError, TypeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_bound_violations_rejected(backend):
    a = torch.tensor([[7, -8]], dtype=torch.int8)
    b = torch.tensor([[3], [-3]], dtype=torch.int8)
    _assert_exact(int_matmul(a, b, backend=backend, a_bound=8, b_bound=3), torch.tensor([[45]]))
    with pytest.raises(RangeError, match="a holds values in \\[-8, 7\\]"):
        int_matmul(a, b, backend=backend, a_bound=7)  # -8 is outside |a| <= 7
    with pytest.raises(RangeError, match="b holds"):
        int_matmul(a, b, backend=backend, b_bound=2)
    with pytest.raises(ConfigError):
        int_matmul(a, b, backend=backend, a_bound=-1)


def test_int64_overflow_rejected_and_float_range_limited():
    ok_a = torch.tensor([[2**61, -(2**61)]])
    ones = torch.ones(2, 1, dtype=torch.int64)
    _assert_exact(int_matmul(ok_a, ones, backend="int"), torch.tensor([[0]]))  # K·A·B = 2^62
    with pytest.raises(RangeError, match="2\\^53"):
        int_matmul(ok_a, ones, backend="float")  # one product may exceed float64's integers
    for backend in BACKENDS:
        with pytest.raises(RangeError, match="2\\^63"):
            int_matmul(ok_a * 2, ones, backend=backend)  # K·A·B = 2^63
        with pytest.raises(RangeError, match="2\\^63"):
            int_linear(ok_a[:, :1], torch.tensor([[2]]), torch.tensor([2**62]), backend=backend)


def test_bad_shapes_and_backend_rejected():
    a = torch.ones(2, 3, dtype=torch.int8)
    with pytest.raises(ConfigError, match="contracted sizes"):
        int_matmul(a, torch.ones(4, 2, dtype=torch.int8))
    with pytest.raises(ConfigError, match="at least one dimension"):
        int_matmul(torch.tensor(2), a)
    with pytest.raises(ConfigError, match="backend"):
        int_matmul(a, a.T, backend="fast")


def test_reduced_precision_float32_refused():
    """A torch set to bfloat16 float32 matmuls would break the 2^24 argument: the float backend refuses."""
    a = torch.ones(2, 3, dtype=torch.int8)
    settings = torch.backends.mkldnn.matmul
    if not hasattr(settings, "fp32_precision"):
        pytest.skip("torch without per-backend fp32_precision")
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        with pytest.raises(ConfigError, match="IEEE"):
            int_matmul(a, a.T, backend="float")
        _assert_exact(int_matmul(a, a.T, backend="int"), torch.full((2, 2), 3))
    finally:
        settings.fp32_precision = before
    _assert_exact(int_matmul(a, a.T, backend="float"), torch.full((2, 2), 3))


# --- the int8 GEMM of a linear layer -------------------------------------------------------------

needs_int8 = pytest.mark.skipif(not int8_gemm_available(), reason="torch._int_mm does not run on this CPU")


def _linear_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = _python_matmul(x.reshape(-1, x.shape[-1]), w.T).reshape(*x.shape[:-1], w.shape[0])
    return out if bias is None else out + bias


@needs_int8
@pytest.mark.parametrize("lo, hi", [(-128, 127), (0, 255), (-200, 55), (3, 10), (-16, 239)])
def test_int8_linear_is_exact_at_the_extremes(lo, hi):
    """Activations at both ends of their range against weight rows at both ends of theirs (the sums and
    the corrections peak there), random ones in between; unsigned and asymmetric ranges need the shifts."""
    gen = torch.Generator().manual_seed(lo & 0xFF)
    k, n = 37, 6
    w = torch.stack([_ints(gen, (k,), -z, 255 - z, torch.int64) for z in (0, 255, 128, 70, 3, 200)])
    w[1] = -255  # a constant row: span 0
    bias = torch.tensor([0, 2**20, -(2**20), 7, -1, 12345])
    x = _ints(gen, (2, 5, k), lo, hi, torch.int64)
    x[0, 0], x[0, 1], x[0, 2] = lo, hi, torch.where(torch.arange(k) % 2 == 0, lo, hi)
    for b in (bias, None):
        linear = Int8Linear(w, b, lo, hi)
        got = linear(x.to(torch.int32))
        assert got.dtype == torch.int32
        _assert_exact(got.to(torch.int64), _linear_reference(x, w, b))


@needs_int8
def test_int8_linear_accumulates_in_int64_where_int32_could_overflow():
    """K = 2^13: the GEMM's sums reach 2^27, the row-sum correction 2^13·2^7·128 = 2^27; a bias of
    2^31 - 2^28 brings the bound to 2^31: the corrections then run in int64 (and stay exact)."""
    k = 2**13
    w = torch.full((2, k), -255)
    w[1] = 0
    x = torch.full((1, k), -128)
    bias = torch.tensor([2**31 - 2**28, 0])
    small, big = Int8Linear(w, None, -128, 127), Int8Linear(w, bias, -128, 127)
    assert small.acc == torch.int32 and big.acc == torch.int64
    _assert_exact(big(x).to(torch.int64), _linear_reference(x, w, bias))
    _assert_exact(small(x).to(torch.int64), _linear_reference(x, w, None))


def test_int8_linear_needs_spans_of_256():
    w = torch.tensor([[-128, 127], [0, 255]])
    assert Int8Linear.fits(w, -5, 250) and not Int8Linear.fits(w, -5, 251)
    assert not Int8Linear.fits(torch.tensor([[-128, 128]]), 0, 1)
    assert not Int8Linear.fits(torch.zeros(2, 0, dtype=torch.int64), 0, 1)
    with pytest.raises(RangeError, match="256"):
        Int8Linear(w, None, 0, 256)
