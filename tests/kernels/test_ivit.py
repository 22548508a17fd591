"""I-ViT kernels: integer implementation == float simulation (exhaustive / dense / extremes), accuracy
against the exact float op, ranges below 2^52, and errors for what the arithmetic cannot hold."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitquant.errors import ConfigError
from vitquant.kernels.arith import EXACT_LIMIT, FLOAT, INT, check_exact
from vitquant.kernels.base import GeluKernel, LayerNormKernel, SoftmaxKernel
from vitquant.kernels.ivit import (
    INPUT_LIMIT,
    ILayerNorm,
    ShiftGELU,
    Shiftmax,
    exp_constants,
    gelu_slope_mul,
    log2e_mul,
    shift_exp,
)

pytestmark = pytest.mark.usefixtures("single_thread")

XMAX = INPUT_LIMIT - 1  # largest accepted |x|
SCALES = [1e-4, 3.7e-3, 0.02, 0.1, 1.0 / 3.0, 0.5, 1.0, 1.7, 10.0]


def _s(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _both(kernel, x: torch.Tensor, scale: float, *affine: torch.Tensor):
    """Run ``kernel`` in both backends; assert bit-equal integers and equal scales; return INT's."""
    y_int, s_int = kernel(INT.tensor(x), _s(scale), INT, *affine)
    y_flt, s_flt = kernel(FLOAT.tensor(x), _s(scale), FLOAT, *affine)
    assert y_int.dtype == torch.int64 and y_flt.dtype == torch.float64
    assert torch.isfinite(y_flt).all()
    assert torch.equal(y_int.double(), y_flt)
    assert torch.equal(s_int, s_flt) and s_int.dtype == torch.float64
    assert torch.isfinite(s_int).all() and (s_int > 0).all()
    check_exact(y_int, kernel.name)
    return y_int, s_int


# ----------------------------------------------------------------------------------------- ShiftExp


def test_shift_multipliers():
    x = torch.arange(-1000, 1001)
    assert torch.equal(log2e_mul(x, INT), x + (x >> 1) - (x >> 4))
    assert torch.equal(gelu_slope_mul(x, INT), x + (x >> 1) + (x >> 3) + (x >> 4))
    assert log2e_mul(torch.tensor([-1600]), INT).item() == -2300  # 1.4375
    assert gelu_slope_mul(torch.tensor([1600]), INT).item() == 2700  # 1.6875


@pytest.mark.parametrize(
    "i0,n,span", [(1, 15, 2**21), (2, 23, 2**21), (3, 15, 2**18), (37, 15, 2**17), (10_000, 23, 2**17)]
)
def test_shift_exp_exhaustive_backends_equal(i0, n, span):
    """Every Δ in (-span, 0]: the largest |Δ| a kernel can pass (2^17 · 2^p, p = 4 only when I₀ = 1)."""
    delta = torch.arange(-span + 1, 1)
    e_int = shift_exp(delta, i0, n, INT)
    e_flt = shift_exp(delta.double(), i0, n, FLOAT)
    assert torch.equal(e_int.double(), e_flt)
    assert e_int.min() >= 0 and e_int.max() == i0 * 2**n == e_int[-1]  # e⁰ = I₀ 2^N at Δ = 0
    assert (e_int[1:] >= e_int[:-1]).all()  # monotone in Δ
    assert e_int[0] == 0 or span < 2**18  # far tails decay to exactly 0 (no 2^-N floor)


# measured worst relative error of E / (I₀ 2^N) against e^(Δ/I₀) for Δ/I₀ in [-5, 0], and the bound
SHIFT_EXP_TOL = {10: (0.1343, 0.14), 100: (0.0834, 0.09), 1000: (0.0797, 0.085), 10_000: (0.0791, 0.085)}


@pytest.mark.parametrize("i0", sorted(SHIFT_EXP_TOL))
def test_shift_exp_approximates_exp(i0):
    """Sources: 1 - f/2 for 2^-f (up to +6.1 %), 1.4375 for log₂e (+2.6 % at Δ/I₀ = -5), and the
    floors of Δ >> 1, Δ >> 4 (dominant for small I₀). Never below the exact value here."""
    measured, tol = SHIFT_EXP_TOL[i0]
    delta = torch.arange(-5 * i0, 1)
    e = shift_exp(delta, i0, 15, INT).double()
    exact = torch.exp(delta.double() / i0) * i0 * 2**15
    rel = (e - exact) / exact
    assert rel.abs().max().item() <= tol and rel.abs().max().item() >= measured * 0.5
    assert rel.min().item() >= 0


def test_exp_constants():
    assert exp_constants(0.1, 15, 1, "t") == (0, 10)
    assert exp_constants(1.0 / 3.0, 15, 1, "t") == (0, 3)  # floor(1/S), as the paper
    assert exp_constants(1.0, 15, 1, "t") == (0, 1)
    assert exp_constants(1.7, 15, 1, "t") == (1, 1)  # pre-shift: 2^p >= S
    assert exp_constants(10.0, 15, 1, "t") == (4, 1)
    assert exp_constants(1e-4, 23, 2**15, "t") == (0, 10_000)  # I₀ 2^38 < 2^52: still exact
    with pytest.raises(ConfigError, match="too small"):
        exp_constants(1e-5, 23, 2**15, "t")


# ----------------------------------------------------------------------------------------- Shiftmax


def _diff_rows() -> torch.Tensor:
    """Two-element rows [a, b] covering every difference a - b with |a|, |b| < 2^16."""
    d = torch.arange(-(2 * XMAX), 2 * XMAX + 1)
    a = torch.div(d, 2, rounding_mode="floor") + d.remainder(2)
    b = -torch.div(d, 2, rounding_mode="floor")
    return torch.stack([a, b], dim=-1)


@pytest.mark.parametrize("out_bits", [2, 8, 16])
def test_shiftmax_two_element_rows_exhaustive(out_bits):
    """Softmax depends only on differences: two-element rows cover every pair exhaustively."""
    rows = _diff_rows()
    kernel = Shiftmax(out_bits)
    for scale in SCALES:
        y, y_scale = _both(kernel, rows, scale)
        assert y_scale.item() == 2.0 ** (1 - out_bits)
        assert y.min() >= 0 and y.max() <= 2 ** (out_bits - 1)
        assert (y.sum(-1) <= 2 ** (out_bits - 1)).all() and (y.sum(-1) >= 2 ** (out_bits - 1) - 1).all()
        # the larger entry never gets the smaller probability
        d = rows[:, 0] - rows[:, 1]
        assert (y[d > 0, 0] >= y[d > 0, 1]).all() and (y[d < 0, 0] <= y[d < 0, 1]).all()


def _extreme_rows(length: int, gen: torch.Generator) -> torch.Tensor:
    rows = [
        torch.full((length,), XMAX),  # all equal, at both ends of the range
        torch.full((length,), -XMAX),
        torch.zeros(length, dtype=torch.int64),
        torch.full((length,), -XMAX).index_fill(0, torch.tensor([0]), XMAX),  # one huge, rest tiny
        torch.full((length,), XMAX).index_fill(0, torch.tensor([length - 1]), -XMAX),  # one tiny
        torch.where(torch.arange(length) % 2 == 0, XMAX, -XMAX),  # max-magnitude alternating
        torch.randint(-XMAX, XMAX + 1, (length,), generator=gen),  # max-magnitude random
        torch.randint(XMAX - 40, XMAX + 1, (length,), generator=gen),  # near-ties at the top
        torch.randint(-128, 128, (length,), generator=gen),  # 8-bit
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("length", [1, 2, 49, 197, 1024])
def test_shiftmax_extremes_backends_equal_and_in_range(length):
    gen = torch.Generator().manual_seed(length)
    rows = _extreme_rows(length, gen)
    for scale in (1e-4, 0.1, 1.0, 10.0):
        for out_bits in (8, 16):
            kernel = Shiftmax(out_bits)
            y, _ = _both(kernel, rows, scale)
            full = 2 ** (out_bits - 1)
            sums = y.sum(-1)
            assert y.min() >= 0 and (sums <= full).all() and (sums > full - length).all()
            if length > 1:
                assert torch.equal(y[0], y[0, :1].expand(length))  # all-equal rows stay uniform
                assert y[3, 0] == full or scale < 1e-3  # one huge logit takes (nearly) everything
            else:
                assert (y == full).all()
            # intermediates: E <= I₀ 2^N, ΣE <= L I₀ 2^N, E 2^(k-1) < 2^52 (documented bounds)
            p, i0 = exp_constants(scale, Shiftmax.N, max(length, full), "t")
            delta = INT.shift_left(rows - rows.amax(-1, keepdim=True), p)
            e = shift_exp(delta, i0, Shiftmax.N, INT)
            assert e.max() <= i0 * 2**Shiftmax.N and e.sum(-1).max() <= length * i0 * 2**Shiftmax.N
            check_exact(e.sum(-1), "sum")
            check_exact(e * full, "numerator")


def test_shiftmax_batched_shapes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (2, 3, 49, 49), generator=gen)  # Swin windows: 49 tokens
    y, _ = _both(Shiftmax(), x, 0.08)
    assert y.shape == x.shape
    flat, _ = Shiftmax()(x.reshape(-1, 49), _s(0.08), INT)
    assert torch.equal(flat.reshape(x.shape), y)


# measured max |p_int - p| over the test's data (seed 0, 256 rows): worst of the lengths 49 / 197
SHIFTMAX_TOL = {0.02: (0.0181, 0.020), 0.05: (0.0211, 0.024), 0.1: (0.0296, 0.033), 0.25: (0.0564, 0.062)}


@pytest.mark.parametrize("scale", sorted(SHIFTMAX_TOL))
def test_shiftmax_accuracy_vs_softmax(scale):
    """8-bit logits; error = linear 2^-f (<= 6 %), log₂e ≈ 1.4375, ⌊1/S⌋, and the 1/128 output step."""
    measured, tol = SHIFTMAX_TOL[scale]
    worst = 0.0
    for length in (49, 197):
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(-128, 128, (256, length), generator=gen)
        x[0] = 127
        x[1, 0], x[1, 1:] = 127, -128
        y, y_scale = Shiftmax(8)(x, _s(scale), INT)
        ref = torch.softmax(x.double() * scale, dim=-1)
        worst = max(worst, (y * y_scale - ref).abs().max().item())
    assert worst <= tol, worst
    assert worst >= measured * 0.5  # the measurement documented above is still what we test


def test_shiftmax_16bit_output_row_sums():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (64, 197), generator=gen)
    y, y_scale = Shiftmax(16)(x, _s(0.1), INT)
    sums = y.sum(-1) * y_scale
    assert (sums <= 1).all() and (sums > 1 - 197 * y_scale).all()


def test_shiftmax_rejects():
    kernel = Shiftmax()
    x = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ConfigError, match="too small"):
        kernel(x, _s(1e-13), INT)  # the logit range T/S needs more than 40 bits
    # small scales are reduced onto a grid of T/2^15 (I₀ <= 2^11): long rows stay exact (L I₀ 2^N < 2^52)
    kernel(torch.zeros(1, 2**18, dtype=torch.int64), _s(1e-6), INT)
    with pytest.raises(ConfigError, match="too small"):
        Shiftmax().softmax(torch.zeros(1, 2**18, dtype=torch.int64), _s(1e-6), INT)  # unreduced: L I₀ 2^N >= 2^52
    with pytest.raises(ConfigError, match="empty"):
        kernel(torch.zeros(2, 0, dtype=torch.int64), _s(0.1), INT)
    for bad in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ConfigError, match="finite and positive"):
            kernel(x, _s(bad), INT)
    with pytest.raises(ConfigError, match="one input scale"):
        kernel(x, torch.ones(4, dtype=torch.float64), INT)
    with pytest.raises(ConfigError, match="2\\^40"):
        kernel(torch.tensor([[2**40, 0]]), _s(0.1), INT)
    with pytest.raises(ConfigError, match="2\\^16"):  # the family's own step takes reduced inputs only
        kernel.softmax(torch.tensor([[-INPUT_LIMIT, 0]]), _s(0.1), INT)
    with pytest.raises(ConfigError):
        Shiftmax(out_bits=1)


# ---------------------------------------------------------------------------------------- ShiftGELU


@pytest.mark.parametrize("out_bits", [2, 8, 16])
def test_shiftgelu_exhaustive_backends_equal(out_bits):
    x = torch.arange(-XMAX, XMAX + 1)
    kernel = ShiftGELU(out_bits)
    for scale in SCALES:
        y, y_scale = _both(kernel, x, scale)
        assert y_scale.item() == scale * 2.0 ** (1 - out_bits)
        full = 2 ** (out_bits - 1)
        sig = torch.where(x != 0, torch.div(y, torch.where(x != 0, x, 1), rounding_mode="floor"), full // 2)
        assert torch.equal(sig * x, y)  # output = x · σ_int exactly
        assert sig.min() >= 0 and sig.max() <= full
        assert (sig[1:] >= sig[:-1]).all()  # σ monotone
        assert y[XMAX] == 0  # x = 0
        assert y.abs().max() < 2**31
        assert (y[x > 0] <= x[x > 0] * full).all() and (y[x < 0] <= 0).all()


def test_shiftgelu_sigmoid_half_at_zero():
    """σ(0) = 1/2: seen through x = 1 at S = 2^-13 (I₀ = 2^13), where σ_int = ⌊2^(k-1) 2I₀ / (4I₀ - 1)⌋
    = 2^(k-2) for every k <= 16."""
    for out_bits in (2, 8, 16):
        y, _ = ShiftGELU(out_bits)(torch.tensor([1]), _s(2.0**-13), INT)
        assert y.item() == 2 ** (out_bits - 2)


# measured max |gelu_int - gelu| / max|x| (8-bit: all x in [-128, 127]; 16-bit: all |x| < 2^16)
SHIFTGELU_TOL = {
    (0.01, 8): (0.0140, 0.0155),
    (0.05, 8): (0.0078, 0.0086),
    (0.1, 8): (0.0067, 0.0075),
    (0.001, 16): (0.0032, 0.0036),
}


@pytest.mark.parametrize("scale,bits", sorted(SHIFTGELU_TOL))
def test_shiftgelu_accuracy_vs_gelu(scale, bits):
    """Error relative to the input range: σ(1.702x) vs Φ(x) (<= 0.02 absolute), 1.6875 for 1.702,
    ShiftExp's 6 %, and the σ output step 2^-(k-1) (8-bit output)."""
    measured, tol = SHIFTGELU_TOL[(scale, bits)]
    x = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1))
    y, y_scale = ShiftGELU(8)(x, _s(scale), INT)
    err = ((y * y_scale - F.gelu(x.double() * scale)).abs().max() / (x.abs().max() * scale)).item()
    assert err <= tol, err
    assert err >= measured * 0.5


def test_shiftgelu_rejects():
    with pytest.raises(ConfigError, match="too small"):
        ShiftGELU(16)(torch.zeros(3, dtype=torch.int64), _s(5e-5), INT)  # I₀ 2^38 >= 2^52
    ShiftGELU(8)(torch.zeros(3, dtype=torch.int64), _s(5e-5), INT)  # fine with an 8-bit sigmoid
    with pytest.raises(ConfigError, match="2\\^16"):
        ShiftGELU()(torch.tensor([-INPUT_LIMIT]), _s(0.1), INT)


# ---------------------------------------------------------------------------------------- LayerNorm


def _affine(channels: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """timm-like affine with |w| in [0.1, 3], 20 % negative, bias ~ N(0, 1)."""
    w = torch.rand(channels, generator=gen) * 2.9 + 0.1
    w = torch.where(torch.rand(channels, generator=gen) < 0.2, -w, w)
    return w, torch.randn(channels, generator=gen)


@pytest.mark.parametrize("channels", [1, 2, 49, 768, 1024, 4096])
def test_layernorm_extremes_backends_equal(channels):
    gen = torch.Generator().manual_seed(channels)
    w, b = _affine(channels, gen)
    rows = _extreme_rows(channels, gen)
    kernel = ILayerNorm()
    y, y_scale = _both(kernel, rows, 0.05, w, b)
    base = math.sqrt(channels) / 2**30
    assert y_scale.shape == (channels,)
    assert torch.allclose(y_scale, base * w.double().abs(), rtol=1e-15, atol=0)
    bias_int = torch.floor(b.double() / y_scale + 0.5).long()
    assert torch.equal(y[0], bias_int) and torch.equal(y[2], bias_int)  # constant rows: std 0
    norm = (y - bias_int) * torch.sign(w).long()
    assert norm.abs().max() <= 2**30
    # intermediates: variance of the alternating ±XMAX row is the maximum, C · XMAX² < 2^46 (C = 4096)
    dev = rows - torch.div(2 * rows.sum(-1, keepdim=True) + channels, 2 * channels, rounding_mode="floor")
    var = (dev * dev).sum(-1)
    assert var.max() <= channels * (2 * XMAX) ** 2 < 2**52
    check_exact(var, "variance")


def test_layernorm_random_16bit_backends_equal():
    gen = torch.Generator().manual_seed(11)
    for channels in (3, 197, 768, 4096):
        x = torch.randint(-XMAX, XMAX + 1, (8, channels), generator=gen)
        w, b = _affine(channels, gen)
        _both(ILayerNorm(), x, 1e-3, w, b)


# measured max |y - layer_norm| / |w| (normalized units) at C = 768 over the test's data
LAYERNORM_TOL = {"uniform8": (0.0074, 0.0082), "outliers8": (0.0286, 0.032), "uniform16": (0.00085, 0.00095)}


@pytest.mark.parametrize("kind", sorted(LAYERNORM_TOL))
def test_layernorm_accuracy_vs_layer_norm(kind):
    """Sources: the rounded mean (<= 0.5 / σ_int), ⌊√v⌋ (<= 1/√v relative), ⌊(2³¹-1)/σ⌋, floors."""
    measured, tol = LAYERNORM_TOL[kind]
    gen = torch.Generator().manual_seed(0)
    channels = 768
    if kind == "uniform8":
        x = torch.randint(-128, 128, (64, channels), generator=gen)
    elif kind == "uniform16":
        x = torch.randint(-XMAX, XMAX + 1, (64, channels), generator=gen)
    else:  # 5 % of the channels 30x larger (systematic outlier channels, as in ViT LayerNorm inputs)
        big = torch.where(torch.rand(channels, generator=gen) < 0.05, 30.0, 1.0)
        x = (torch.randn(64, channels, generator=gen) * 4 * big).round().clamp(-127, 127).long()
    w, b = _affine(channels, gen)
    y, y_scale = ILayerNorm()(x, _s(0.05), INT, w, b)
    ref = F.layer_norm(x.double() * 0.05, (channels,), w.double(), b.double(), eps=1e-12)
    err = ((y * y_scale - ref) / w.double().abs()).abs().max().item()
    assert err <= tol, err
    assert err >= measured * 0.5


def test_layernorm_zero_and_negative_weights():
    channels = 8
    x = torch.tensor([[5, -3, 7, 0, 2, 2, -9, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    w = torch.tensor([1.0, 0.0, -2.0, 0.0, 0.5, -0.5, 3.0, 1.0])
    b = torch.tensor([0.5, -1.25, 0.0, 0.0, 2.0, 0.0, -1.0, 0.0])
    y, y_scale = _both(ILayerNorm(), x, 0.1, w, b)
    base = math.sqrt(channels) / 2**30
    assert torch.equal(y_scale[w == 0], torch.full((2,), base, dtype=torch.float64))
    assert (y_scale > 0).all()
    # weight 0: output integers are round(b / base), for every row
    expected = torch.floor(b[w == 0].double() / base + 0.5).long()
    assert torch.equal(y[:, w == 0], expected.expand(2, -1))
    deq = y * y_scale
    ref = F.layer_norm(x.double(), (channels,), w.double(), b.double(), eps=1e-12)
    # normalized error, measured 0.087: the mean 5/8 rounds to 1, an offset of 0.375 / σ (σ = 4.3)
    assert ((deq[0] - ref[0]) / w.abs().clamp(min=1)).abs().max() < 0.095
    assert torch.equal(y[1], torch.floor(b.double() / y_scale + 0.5).long())  # constant row: bias only
    # a negative weight flips the sign of the normalized integers, and |w| only moves the scale
    y_abs, _ = ILayerNorm()(x, _s(0.1), INT, w.abs(), torch.zeros(channels))
    y_neg, _ = ILayerNorm()(x, _s(0.1), INT, w, torch.zeros(channels))
    assert torch.equal(y_neg[:, w < 0], -y_abs[:, w < 0]) and torch.equal(y_neg[:, w > 0], y_abs[:, w > 0])


def test_layernorm_largest_normalized_integer():
    """[0, 1]: the mean rounds up to 1, d = [-1, 0], σ = 1, f = 2^31 - 1, y = ⌊-(2^31 - 1) / 2⌋ = -2^30."""
    y, _ = _both(ILayerNorm(), torch.tensor([[0, 1]]), 0.1, torch.ones(2), torch.zeros(2))
    assert y.tolist() == [[-(2**30), 0]]


def test_layernorm_rejects():
    kernel = ILayerNorm()
    x = torch.zeros(2, 4, dtype=torch.int64)
    w, b = torch.ones(4), torch.zeros(4)
    with pytest.raises(ConfigError, match="one input scale"):
        kernel(x, torch.ones(4, dtype=torch.float64), INT, w, b)  # "ptf" per-channel scales
    with pytest.raises(ConfigError, match="needs 4 weights"):
        kernel(x, _s(0.1), INT, torch.ones(3), b)
    with pytest.raises(ConfigError, match="too large"):
        kernel(x, _s(0.1), INT, torch.tensor([1e-30, 1, 1, 1]), torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(ConfigError, match="finite"):
        kernel(x, _s(0.1), INT, torch.tensor([math.nan, 1, 1, 1]), b)
    with pytest.raises(ConfigError, match="2\\^16"):
        kernel(torch.tensor([[0, INPUT_LIMIT]]), _s(0.1), INT, torch.ones(2), torch.zeros(2))
    with pytest.raises(ConfigError, match="channels"):
        kernel(torch.zeros(1, 0, dtype=torch.int64), _s(0.1), INT, torch.ones(0), torch.zeros(0))


# ------------------------------------------------------------------------------------------ registry


def test_classes_and_registry():
    assert issubclass(Shiftmax, SoftmaxKernel) and issubclass(ShiftGELU, GeluKernel)
    assert issubclass(ILayerNorm, LayerNormKernel)
    for cls in (Shiftmax, ShiftGELU, ILayerNorm):
        assert cls.family == "ivit" and cls.input_format == ("product" if cls is Shiftmax else "uniform")
    assert Shiftmax.N == 15 and ShiftGELU.N == 23 and Shiftmax().out_bits == 8
    assert EXACT_LIMIT == 2**52


def test_make_kernel_builds_ivit():
    pytest.importorskip("vitquant.kernels.ibert")
    pytest.importorskip("vitquant.kernels.fqvit")
    from vitquant.kernels.base import make_kernel

    assert type(make_kernel("ivit", "softmax", out_bits=6)) is Shiftmax
    assert make_kernel("ivit", "softmax", out_bits=6).out_bits == 6
    assert type(make_kernel("ivit", "gelu")) is ShiftGELU
    assert type(make_kernel("ivit", "layernorm")) is ILayerNorm
