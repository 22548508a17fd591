"""I-BERT kernels: integer == float simulation (exhaustive or dense + extremes), accuracy bounds, ranges."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitquant.errors import ConfigError
from vitquant.kernels import base
from vitquant.kernels.arith import FLOAT, INT, check_exact
from vitquant.kernels.ibert import (
    FINE_SCALE_LOG2,
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    exp_constants,
    fine_shift,
    int_exp,
    normalize,
    softmax_exp,
)
from kernel_checks import realistic_logits, run_both

pytestmark = pytest.mark.usefixtures("single_thread")

MAX = 2**16 - 1  # largest accepted |x|
# the accepted range's ends, powers of two near the fine grid, and realistic 6..16-bit scales
SCALES = [2**-20, 1e-4, 2**-14, 3e-4, 0.003, 0.0123, 0.05, 0.1, 0.37, 1.0, 10.0, 2**10]


# --------------------------------------------------------------------------- i-exp


def test_fine_shift_reaches_the_fine_grid_with_the_smallest_shift():
    fine = 2.0**FINE_SCALE_LOG2
    for s in SCALES + [fine * (1 + 2**-40), fine * 2, fine * 3]:
        k = fine_shift(s)
        assert s / 2**k <= fine
        assert k == 0 or s / 2 ** (k - 1) > fine
    assert fine_shift(fine) == 0 and fine_shift(2 * fine) == 1 and fine_shift(2 * fine * (1 + 2**-40)) == 2


@pytest.mark.parametrize("bits", [16, 34])
def test_int_exp_exhaustive_int_equals_float_and_error(bits):
    x = torch.arange(-(2**17) + 1, 1)  # every x - max of |x| < 2^16 inputs
    worst = 0.0
    for s in SCALES:
        const = exp_constants(s, bits)
        ei = int_exp(INT.tensor(x), const, INT)
        ef = int_exp(FLOAT.tensor(x), const, FLOAT)
        assert torch.equal(ei.to(torch.float64), ef), s
        assert int(ei.min()) >= 0 and int(ei.max()) < 2**bits
        assert 2 ** (bits - 1) <= int(ei[-1]) < 2**bits  # exp(0)
        ref = torch.exp(x.to(torch.float64) * s)
        approx = ei.to(torch.float64) * const.out_scale
        if bits == 16:
            worst = max(worst, (approx - ref).abs().max().item())
        else:  # relative error where exp is not negligible
            big = ref > 2**-20
            worst = max(worst, ((approx - ref) / ref)[big].abs().max().item())
    # measured: 1.937e-3 absolute (16 bits: the polynomial's 1.9e-3 plus 2^-15), 4.20e-3 relative (34 bits)
    assert worst <= (1.95e-3 if bits == 16 else 4.3e-3)


def test_exp_row_sums_stay_in_range_at_the_longest_rows():
    # 2^16 equal elements: the largest Σe (every e = exp(0)); 16 bits: < 2^32, 34 bits: < 2^50
    x = torch.zeros(1, 2**16, dtype=torch.int64)
    for bits, limit in [(16, 2**32), (34, 2**50)]:
        for s in [2**-20, 0.05, 2**10]:
            const = exp_constants(s, bits)
            ei, total_i = softmax_exp(INT.tensor(x), const, INT)
            ef, total_f = softmax_exp(FLOAT.tensor(x), const, FLOAT)
            assert torch.equal(total_i.to(torch.float64), total_f)
            assert 0 < int(total_i) < limit


# --------------------------------------------------------------------------- IntSoftmax


@pytest.mark.parametrize("n", [1, 49, 197, 1024])
def test_softmax_int_equals_float_dense(n):
    gen = torch.Generator().manual_seed(n)
    kernels = [IntSoftmax(b) for b in (2, 8, 16)]
    for s in SCALES:
        uniform = torch.randint(-MAX, MAX + 1, (3, n), generator=gen)
        peaky, _ = realistic_logits(gen, 3, n, 4.0, 8)
        for x in (uniform, peaky):
            for kernel in kernels:
                y, ys = run_both(kernel, x, s)
                assert ys.item() == 2.0**-kernel.out_bits
                assert int(y.min()) >= 0 and int(y.max()) <= 2**kernel.out_bits
                assert (y.sum(-1) <= 2**kernel.out_bits).all()


@pytest.mark.parametrize("n", [1, 2, 49, 197, 1024])
def test_softmax_extremes(n):
    one_hot = torch.full((n,), -MAX)
    one_hot[n // 2] = MAX
    alternating = torch.tensor([MAX, -MAX]).repeat(n)[:n]
    tiny_spread = torch.full((n,), MAX)
    tiny_spread[::2] = MAX - 1
    rows = {
        "zeros": torch.zeros(n, dtype=torch.int64),
        "max": torch.full((n,), MAX),
        "min": torch.full((n,), -MAX),
        "one_huge": one_hot,
        "alternating": alternating,
        "tiny_spread": tiny_spread,
    }
    x = torch.stack(list(rows.values()))
    for s in [2**-20, 1e-4, 0.05, 1.0, 2**10]:
        for bits in (2, 8, 16):
            y, _ = run_both(IntSoftmax(bits), x, s)
            top = 2**bits
            for row in y[:3]:  # all-equal rows: equal outputs, about 2^b / n each
                assert torch.all(row == row[0]) and top // n - 1 <= int(row[0]) <= top // n
            if n > 1 and s >= 1e-4:  # exp(-2·65535·1e-4) < 2^-18: one-hot, ⌊e·⌊2^40/e⌋/2^(40-b)⌋ = 2^b - 1
                assert int(y[3, n // 2]) == top - 1 and int(y[3].sum()) == top - 1


@pytest.mark.parametrize("bits", [8, 16])
def test_softmax_accuracy_and_row_sums(bits):
    gen = torch.Generator().manual_seed(bits)
    worst = 0.0
    kernel = IntSoftmax(bits)
    for sigma in (1.0, 3.0, 8.0):
        for n in (49, 197, 1024):
            for in_bits in (6, 8, 12, 16):
                x, s = realistic_logits(gen, 8, n, sigma, in_bits)
                y, ys = kernel(INT.tensor(x), torch.tensor(s, dtype=torch.float64), INT)
                p = torch.softmax(x * s, dim=-1)
                worst = max(worst, (y * ys - p).abs().max().item())
                sums = y.sum(-1)  # every floor loses < 1 step
                assert (sums <= 2**bits).all() and (sums > 2**bits - n - 1).all()
    # measured: 4.12e-3 (8 bits: one step 3.9e-3 plus i-exp), 2.87e-3 (16 bits: i-exp's relative error)
    assert worst <= (4.2e-3 if bits == 8 else 2.95e-3)


def test_softmax_rejects_what_it_cannot_hold():
    x = torch.zeros(2, 4, dtype=torch.int64)
    kernel = IntSoftmax()
    for bad in [0.0, -0.1, float("nan"), float("inf"), 1e-13, 2**11]:  # small scales are reduced down to ~2e-11
        with pytest.raises(ConfigError):
            kernel(x, torch.tensor(bad), INT)
    with pytest.raises(ConfigError):
        kernel(x, torch.tensor([0.1, 0.1]), INT)
    with pytest.raises(ConfigError):
        kernel(x + 2**40, torch.tensor(0.1), INT)
    with pytest.raises(ConfigError):
        kernel(torch.zeros(1, 2**16 + 1, dtype=torch.int64), torch.tensor(0.1), INT)
    with pytest.raises(ConfigError):
        kernel(torch.zeros(2, 0, dtype=torch.int64), torch.tensor(0.1), INT)
    with pytest.raises(ConfigError):
        IntSoftmax(out_bits=17)


# --------------------------------------------------------------------------- IntGELU


def test_gelu_exhaustive_int_equals_float_and_error():
    x = torch.arange(-MAX, MAX + 1)
    kernel = IntGELU()
    worst_small, worst_slope = 0.0, 0.0
    for s in SCALES:
        y, ys = run_both(kernel, x, s)
        assert y.abs().max().item() < 2**46  # documented bound
        assert int(y[MAX]) == 0  # GELU(0)
        real = x.to(torch.float64) * s
        err = (y * ys - F.gelu(real)).abs()
        small = real.abs() <= 8
        worst_small = max(worst_small, err[small].max().item())
        # far out the erf saturates; what is left grows with |x| (the erf scale's resolution)
        slope = (err - 0.0182).clamp(min=0) / real.abs().clamp(min=1e-300)
        worst_slope = max(worst_slope, slope.max().item())
    # measured: 1.8165e-2 for |x·S| <= 8 (i-GELU's own error), slope 4.41e-6 (2^-17.8) beyond
    assert worst_small <= 0.0183
    assert worst_slope <= 4.5e-6


def test_gelu_rejects_what_it_cannot_hold():
    kernel = IntGELU()
    with pytest.raises(ConfigError):
        kernel(torch.tensor([2**16]), torch.tensor(0.1), INT)
    with pytest.raises(ConfigError):
        kernel(torch.tensor([1]), torch.tensor(0.0), INT)
    with pytest.raises(ConfigError):
        kernel(torch.tensor([1]), torch.tensor(2.0**11), INT)


# --------------------------------------------------------------------------- IntLayerNorm


def affine(gen, c):
    """Random LayerNorm affine with negative weights, one zero weight and biases of either sign."""
    w = (torch.rand(c, generator=gen, dtype=torch.float64) * 2.9 + 0.1) * torch.where(
        torch.rand(c, generator=gen) < 0.2, -1.0, 1.0
    ).double()
    w[c // 3] = 0.0
    return w, torch.randn(c, generator=gen, dtype=torch.float64)


def extreme_rows(c):
    one_huge = torch.zeros(c, dtype=torch.int64)
    one_huge[c // 2] = MAX
    one_low = torch.full((c,), MAX)
    one_low[0] = -MAX
    rows = [
        torch.full((c,), MAX),
        torch.full((c,), -MAX),
        torch.zeros(c, dtype=torch.int64),
        torch.tensor([MAX, -MAX]).repeat(c)[:c],
        one_huge,
        one_low,
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("c", [1, 2, 3, 768, 1024, 4096])
def test_layernorm_int_equals_float_at_extremes(c):
    gen = torch.Generator().manual_seed(c)
    w, b = affine(gen, c)
    x = torch.cat([extreme_rows(c), torch.randint(-MAX, MAX + 1, (4, c), generator=gen)])
    y, ys = run_both(IntLayerNorm(), x, 0.05, w, b)
    assert ys.shape == (c,)
    norm = normalize(INT.tensor(x), INT)
    assert norm.abs().max().item() <= 2**30
    dev = x - torch.div(2 * x.sum(-1, keepdim=True) + c, 2 * c, rounding_mode="floor")
    assert (dev * dev).sum(-1).max().item() < 2**44 + c  # Σdev² <= C·M² + C/4 with M < 2^16
    # constant rows normalize to 0: the output is the bias alone
    assert torch.equal(norm[:3], torch.zeros_like(norm[:3]))
    assert torch.equal(y[0], torch.round(b / ys).to(torch.int64))


@pytest.mark.parametrize("bits", [6, 8, 16])
def test_layernorm_normalization_error(bits):
    gen = torch.Generator().manual_seed(bits)
    worst = 0.0
    for c in (2, 3, 48, 197, 768, 1024, 4096):
        spread = torch.exp(torch.randn(c, generator=gen, dtype=torch.float64))
        offset = torch.randn(c, generator=gen, dtype=torch.float64)
        xf = torch.randn(32, c, generator=gen, dtype=torch.float64) * spread + offset
        s = xf.abs().max().item() / (2 ** (bits - 1) - 1)
        x = torch.round(xf / s)
        y = normalize(INT.tensor(x), INT) * (math.sqrt(c) / 2**30)
        sigma = x.std(-1, unbiased=False, keepdim=True)
        ref = (x - x.mean(-1, keepdim=True)) / sigma
        # first-order error: the rounded mean (0.5/σ), the variance it adds (1/8σ²) and isqrt's floor (1/std)
        bound = 0.5 / sigma + ref.abs() * (0.125 / sigma**2 + 1 / (math.sqrt(c) * sigma))
        worst = max(worst, ((y - ref).abs() / bound).max().item())
    # measured: 0.980 / 0.985 / 0.998 of the first-order bound for 6 / 8 / 16 bits (up to 1.011 over 40 seeds of such data)
    assert worst <= 1.05


def test_layernorm_affine_folding():
    gen = torch.Generator().manual_seed(3)
    c = 768
    w, b = affine(gen, c)
    x = torch.randint(-200, 201, (5, c), generator=gen)
    y, ys = run_both(IntLayerNorm(), x, 0.02, w, b)
    base_scale = math.sqrt(c) / 2**30
    norm = normalize(INT.tensor(x), INT)
    expected_scale = base_scale * torch.where(w == 0, torch.ones_like(w), w.abs())
    assert torch.equal(ys, expected_scale)
    bias_int = y - torch.sign(w).to(torch.int64) * norm
    assert (bias_int == bias_int[0]).all()  # the same per-channel offset on every row
    assert ((bias_int[0] * ys - b).abs() <= ys / 2).all()  # round(bias/scale)
    zero = c // 3  # weight 0: scale base, output round(bias/base)
    assert ys[zero].item() == base_scale and (y[:, zero] == round(b[zero].item() / base_scale)).all()
    # the dequantized output against the float LayerNorm of the same (dequantized) input
    ref = F.layer_norm(x.double() * 0.02, (c,), w, b, eps=0.0)
    assert ((y * ys - ref).abs() <= 0.05 * w.abs() + ys).all()


def test_layernorm_rejects_what_it_cannot_hold():
    kernel = IntLayerNorm()
    c = 8
    w, b = torch.ones(c), torch.zeros(c)
    x = torch.zeros(2, c, dtype=torch.int64)
    with pytest.raises(ConfigError):
        wide = torch.zeros(1, 4097, dtype=torch.int64)
        kernel(wide, torch.tensor(0.1), INT, torch.ones(4097), torch.zeros(4097))
    with pytest.raises(ConfigError):
        kernel(x + 2**16, torch.tensor(0.1), INT, w, b)
    with pytest.raises(ConfigError):
        kernel(x, torch.tensor(0.1), INT, torch.ones(c + 1), b)
    with pytest.raises(ConfigError):
        kernel(x, torch.tensor(0.1), INT, torch.full((c,), float("nan")), b)
    with pytest.raises(ConfigError):  # round(bias / (√C/2^30 · 1e-9)) beyond 2^51
        kernel(x, torch.tensor(0.1), INT, torch.full((c,), 1e-9), torch.full((c,), 10.0))
    for bad in (torch.tensor(-1.0), torch.tensor(float("nan")), torch.tensor([0.1, 0.2])):
        with pytest.raises(ConfigError):
            kernel(x, bad, INT, w, b)


# --------------------------------------------------------------------------- registry


def test_kernels_are_registered():
    assert base._KERNELS[("ibert", "softmax")] is IntSoftmax
    assert base._KERNELS[("ibert", "gelu")] is IntGELU
    assert base._KERNELS[("ibert", "layernorm")] is IntLayerNorm
    assert IntSoftmax().out_bits == 8 and IntSoftmax().input_format == "product"


def test_make_kernel_builds_ibert_kernels():
    pytest.importorskip("vitquant.kernels.ivit")  # make_kernel loads every family
    kernel = base.make_kernel("ibert", "softmax", out_bits=16)
    assert isinstance(kernel, IntSoftmax) and kernel.out_bits == 16
    assert "ibert" in base.kernel_choices("gelu")
