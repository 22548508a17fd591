"""FQ-ViT kernels: Log-Int-Softmax and PTF LayerNorm (integer == float simulation, accuracy), PTF fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitquant.errors import ConfigError, NumericalError
from vitquant.kernels import base
from vitquant.kernels.arith import FLOAT, INT, check_exact
from vitquant.kernels.fqvit import (
    LIS_EXP_BITS,
    PTF_K,
    LogIntSoftmax,
    PTFLayerNorm,
    fit_ptf,
    ptf_exponents,
    ptf_integers,
)
from vitquant.kernels.ibert import IntLayerNorm, exp_constants, normalize, softmax_exp
from kernel_checks import realistic_logits, run_both

pytestmark = pytest.mark.usefixtures("single_thread")

MAX = 2**16 - 1
SCALES = [2**-20, 1e-4, 3e-4, 0.003, 0.0123, 0.05, 0.1, 0.37, 1.0, 10.0, 2**10]


def float_log_codes(p: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FQ-ViT's float rule on probabilities p: R = round(1/p), log_round(R), codes >= 2^b mean 0."""
    ratio = torch.round(1.0 / p)
    low = torch.floor(torch.log2(ratio))
    rounds = low + ((ratio - 2**low) >= 2 ** (low - 1)).to(torch.float64)
    return rounds.clamp(max=2**bits - 1), rounds < 2**bits


# --------------------------------------------------------------------------- Log-Int-Softmax


@pytest.mark.parametrize("n", [1, 49, 197, 1024])
def test_log_int_softmax_int_equals_float_dense(n):
    gen = torch.Generator().manual_seed(n)
    for s in SCALES:
        uniform = torch.randint(-MAX, MAX + 1, (3, n), generator=gen)
        peaky, _ = realistic_logits(gen, 3, n, 4.0, 8)
        for x in (uniform, peaky):
            for bits in (2, 3, 4):
                kernel = LogIntSoftmax(bits)
                y, ys = run_both(kernel, x, s)
                top = 2**bits - 1
                assert ys.item() == 2.0**-top
                qi, keep_i = kernel.log_codes(INT.tensor(x), torch.tensor(s, dtype=torch.float64), INT)
                qf, keep_f = kernel.log_codes(FLOAT.tensor(x), torch.tensor(s, dtype=torch.float64), FLOAT)
                assert torch.equal(qi.to(torch.float64), qf) and torch.equal(keep_i, keep_f)
                assert int(qi.min()) >= 0 and int(qi.max()) <= top
                # y is the shift 2^(2^b - 1 - q) where kept, 0 elsewhere
                assert torch.equal(y, torch.where(keep_i, 2 ** (top - qi), torch.zeros_like(qi)))


@pytest.mark.parametrize("n", [1, 2, 3, 49, 197, 1024])
def test_log_int_softmax_extremes(n):
    one_hot = torch.full((n,), -MAX)
    one_hot[0] = MAX
    rows = [
        torch.zeros(n, dtype=torch.int64),
        torch.full((n,), MAX),
        torch.full((n,), -MAX),
        one_hot,
        torch.tensor([MAX, -MAX]).repeat(n)[:n],
    ]
    x = torch.stack(rows)
    kernel = LogIntSoftmax()
    equal_q, equal_keep = float_log_codes(torch.tensor(1.0 / n, dtype=torch.float64), 4)
    for s in [2**-20, 1e-4, 0.05, 1.0, 2**10]:
        y, _ = run_both(kernel, x, s)
        q, keep = kernel.log_codes(INT.tensor(x), torch.tensor(s, dtype=torch.float64), INT)
        # all-equal rows: every e equal, R = n exactly, so the float rule's code
        assert (q[:3] == int(equal_q)).all() and (keep[:3] == bool(equal_keep)).all()
        if s >= 1e-4:  # the maximum has p = 1 (code 0, y = 2^15); the rest is below 2^-15: zero
            assert int(y[3, 0]) == 2**15 and (y[3, 1:] == 0).all() and not keep[3, 1:].any()
    # the longest rows: Σe of 2^16 equal exp(0) < 2^50, as documented
    const = exp_constants(0.05, LIS_EXP_BITS)
    _, total = softmax_exp(INT.tensor(torch.zeros(1, 2**16, dtype=torch.int64)), const, INT)
    assert int(total) < 2**50
    y, _ = run_both(kernel, torch.zeros(1, 2**16, dtype=torch.int64), 0.05)
    assert (y == 0).all()  # p = 2^-16 rounds to code 16: beyond the 4-bit codes


@pytest.mark.parametrize("bits", [3, 4])
def test_log_int_softmax_matches_float_log2_quantization(bits):
    gen = torch.Generator().manual_seed(10 + bits)
    kernel = LogIntSoftmax(bits)
    # code j starts where R = round(1/p) reaches 3·2^(j-2) (2 for j = 1): at 1/p = that - 1/2
    thresholds = torch.tensor([1.5] + [3 * 2 ** (j - 2) - 0.5 for j in range(2, 2**bits + 1)]).double()
    total = mismatched = 0
    worst_distance, worst_sum = 0.0, 0.0
    for sigma in (1.0, 3.0, 8.0):
        for n in (49, 197, 1024):
            for in_bits in (8, 16):
                x, s = realistic_logits(gen, 8, n, sigma, in_bits)
                q, keep = kernel.log_codes(INT.tensor(x), torch.tensor(s, dtype=torch.float64), INT)
                y, ys = kernel(INT.tensor(x), torch.tensor(s, dtype=torch.float64), INT)
                p = torch.softmax(x * s, dim=-1)
                ref_q, ref_keep = float_log_codes(p, bits)
                got = torch.where(keep, torch.exp2(-q.double()), torch.zeros(()))
                want = torch.where(ref_keep, torch.exp2(-ref_q), torch.zeros(()))
                diff = got != want
                total += diff.numel()
                mismatched += int(diff.sum())
                if diff.any():
                    # a mismatch is off by one code (or one side of the last code) ...
                    step = (q.double() - ref_q).abs() + (keep != ref_keep).double()
                    assert (step[diff] == 1).all()
                    # ... and only where 1/p sits at a decision point: R = round(1/p) crosses 3·2^(j-2)
                    distance = (1.0 / p[diff]).unsqueeze(-1) / thresholds - 1
                    worst_distance = max(worst_distance, distance.abs().min(dim=-1).values.max().item())
                worst_sum = max(worst_sum, (y * ys).sum(-1).max().item())
    # measured: 0.0098 % (3 bits) / 0.085 % (4 bits) of the codes differ, all within 0.31 % of a decision
    # point: i-exp's relative error is <= 0.42 %, and 16-bit inputs at small scales are first rounded onto
    # a grid of T/2^15 (reduce_logits: <= 0.04 % more); a row's 2^-q sum is < 1.5 (2^-q < 1.5·p), measured 1.31
    assert mismatched / total <= (1.5e-4 if bits == 3 else 1.0e-3)
    assert worst_distance <= 0.0042 + 0.0004
    assert worst_sum <= 1.5


def test_log_int_softmax_rejects_what_it_cannot_hold():
    assert LogIntSoftmax().out_bits == 4
    with pytest.raises(ConfigError):
        LogIntSoftmax(5)
    x = torch.zeros(1, 4, dtype=torch.int64)
    for bad in [0.0, float("nan"), 2**11, 1e-13]:  # small scales are reduced (reduce_logits) down to ~2e-11
        with pytest.raises(ConfigError):
            LogIntSoftmax()(x, torch.tensor(bad), INT)
    with pytest.raises(ConfigError):
        LogIntSoftmax()(x - 2**40, torch.tensor(0.1), INT)
    with pytest.raises(ConfigError):
        LogIntSoftmax().log_codes(torch.zeros(1, 2**16 + 1, dtype=torch.int64), torch.tensor(0.1), INT)


# --------------------------------------------------------------------------- PTF LayerNorm


def test_ptf_exponents_accepts_power_of_two_factors_only():
    s = 0.0123
    scale = s * torch.tensor([1.0, 8.0, 2.0, 4.0, 1.0], dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    assert ptf_exponents(scale, 5).tolist() == [0, 3, 1, 2, 0]
    assert ptf_exponents(scale.to(torch.float32), 5).tolist() == [0, 3, 1, 2, 0]
    assert ptf_exponents(scale[2:4], 2).tolist() == [0, 1]  # relative to the smallest scale
    assert ptf_exponents(torch.tensor(0.3), 4).tolist() == [0, 0, 0, 0]
    bad = [
        s * torch.tensor([1.0, 3.0], **f64),
        s * torch.tensor([1.0, 16.0], **f64),
        s * torch.tensor([1.0, 2.0 * (1 + 2**-40)], **f64),
        torch.tensor([0.1, -0.2]),
        torch.tensor([0.0, 0.1]),
        torch.tensor([0.1, float("nan")]),
        torch.tensor([0.1, 0.2, 0.4]),
    ]
    for scale in bad:
        with pytest.raises(ConfigError):
            ptf_exponents(scale, 2)


def ptf_scale(gen, c, s=0.01):
    alpha = torch.randint(0, PTF_K + 1, (c,), generator=gen)
    alpha[0] = 0
    return alpha, s * torch.exp2(alpha.to(torch.float64))


@pytest.mark.parametrize("c", [1, 2, 768, 1024, 4096])
def test_ptf_layernorm_is_the_integer_layernorm_of_the_shifted_integers(c):
    gen = torch.Generator().manual_seed(c)
    alpha, scale = ptf_scale(gen, c)
    w = torch.randn(c, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    x = torch.randint(-(2**13), 2**13, (6, c), generator=gen)  # |x·2^α| < 2^16 for IntLayerNorm
    y, ys = run_both(PTFLayerNorm(), x, scale, w, b)
    ref, ref_scale = run_both(IntLayerNorm(), x * 2**alpha, 0.01, w, b)
    assert torch.equal(y, ref) and torch.equal(ys, ref_scale)


@pytest.mark.parametrize("c", [1, 2, 3, 768, 1024, 4096])
def test_ptf_layernorm_int_equals_float_at_extremes(c):
    gen = torch.Generator().manual_seed(100 + c)
    w = torch.randn(c, generator=gen, dtype=torch.float64)
    w[c // 2] = 0.0
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    one_huge = torch.zeros(c, dtype=torch.int64)
    one_huge[-1] = -MAX
    rows = torch.stack(
        [
            torch.full((c,), MAX),
            torch.full((c,), -MAX),
            torch.tensor([MAX, -MAX]).repeat(c)[:c],
            one_huge,
            torch.randint(-MAX, MAX + 1, (c,), generator=gen),
        ]
    )
    widest = torch.full((c,), 0.08).index_fill(0, torch.tensor([0]), 0.01)  # α = 3 but for channel 0
    for scale in (torch.full((c,), 0.08), widest, ptf_scale(gen, c)[1]):
        y, ys = run_both(PTFLayerNorm(), rows, scale, w, b)
        alpha = ptf_exponents(scale, c)
        shifted = rows * 2**alpha
        dev = shifted - torch.div(2 * shifted.sum(-1, keepdim=True) + c, 2 * c, rounding_mode="floor")
        assert (dev * dev).sum(-1).max().item() < 2**50  # documented bound of Σdev²
        norm = normalize(INT.tensor(shifted), INT)
        assert norm.abs().max().item() <= 2**30
        if (alpha == 0).all():  # constant rows normalize to 0: the output is the bias alone
            assert (norm[:2] == 0).all() and torch.equal(y[0], torch.round(b / ys).to(torch.int64))


def test_ptf_layernorm_accuracy_on_fitted_inputs():
    gen = torch.Generator().manual_seed(7)
    worst, worst_out = 0.0, 0.0
    for c in (48, 197, 768, 1024):
        # residual-stream-like activations: channel ranges spanning more than 2^3, a few outlier channels
        spread = torch.exp(torch.randn(c, generator=gen, dtype=torch.float64))
        spread[: c // 16] *= 8
        xf = torch.randn(64, c, generator=gen).double() * spread + torch.randn(c, generator=gen).double()
        for bits in (8, 16):
            scale, zero = fit_ptf(xf, bits)
            x = ptf_integers(xf, scale, zero, bits)
            ones, zeros = torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
            y, ys = run_both(PTFLayerNorm(), x, scale, ones, zeros)
            shifted = x * torch.exp2(ptf_exponents(scale, c).double())
            sigma = shifted.std(-1, unbiased=False, keepdim=True)
            ref = F.layer_norm(x * scale, (c,), eps=0.0)
            bound = 0.5 / sigma + ref.abs() * (0.125 / sigma**2 + 1 / (math.sqrt(c) * sigma))
            worst = max(worst, ((y * ys - ref).abs() / bound).max().item())
            if bits == 8:
                worst_out = max(worst_out, (y * ys - ref).abs().max().item())
    # measured: 1.0003 of the first-order bound (see test_ibert); 2.49e-2 absolute on 8-bit PTF inputs
    # (mostly the rounded mean: 0.5/σ with σ in steps of the common scale s)
    assert worst <= 1.05
    assert worst_out <= 0.026


def test_ptf_layernorm_rejects_bad_scales():
    x = torch.zeros(2, 4, dtype=torch.int64)
    w, b = torch.ones(4), torch.zeros(4)
    with pytest.raises(ConfigError):
        PTFLayerNorm()(x, torch.tensor([0.1, 0.3, 0.1, 0.1]), INT, w, b)
    with pytest.raises(ConfigError):
        PTFLayerNorm()(x, torch.tensor([0.1, 0.1]), INT, w, b)
    with pytest.raises(ConfigError):
        PTFLayerNorm()(x + 2**16, torch.full((4,), 0.1), INT, w, b)
    assert PTFLayerNorm.input_format == "ptf"


# --------------------------------------------------------------------------- PTF fit


def observer_reference(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, float]:
    """FQ-ViT's PTF observer written out channel by channel (uint codes, MSE per candidate factor)."""
    qmax = 2**bits - 1
    rows = x.reshape(-1, x.shape[-1]).double()
    top = max((rows.max() - rows.min()).item() / qmax, torch.finfo(torch.float32).eps)
    zero = min(max(-round(rows.min().item() / top), 0), qmax)
    scales = []
    for c in range(rows.shape[1]):
        data = rows[:, c]
        errors = []
        for factor in (1, 2, 4, 8):
            s = top / 8 * factor
            codes = torch.clamp(torch.round(data / s) + zero, 0, qmax)
            errors.append(((codes - zero) * s - data).pow(2).mean().item())
        scales.append(top / 8 * 2 ** errors.index(min(errors)))
    return torch.tensor(scales, dtype=torch.float64), float(zero)


@pytest.mark.parametrize("bits", [4, 8])
def test_fit_ptf_follows_the_observer(bits):
    gen = torch.Generator().manual_seed(bits)
    c = 24
    spread = torch.exp2(torch.randint(-3, 1, (c,), generator=gen).double()) * 4
    x = torch.randn(3, 50, c, generator=gen, dtype=torch.float64) * spread + 0.5
    scale, zero = fit_ptf(x, bits)
    ref_scale, ref_zero = observer_reference(x, bits)
    assert torch.allclose(scale, ref_scale, rtol=1e-12, atol=0)
    assert zero.shape == (c,) and (zero == ref_zero).all()
    alpha = ptf_exponents(scale, c)  # exactly s·2^α
    assert torch.equal(scale, scale.min() * torch.exp2(alpha.double()))
    assert torch.equal(ptf_exponents(scale.float(), c), alpha)  # survives float32 storage
    # the widest channels take the largest factor
    widest = x.reshape(-1, c).abs().amax(0).argmax()
    assert scale[widest] == scale.max()


def test_fit_ptf_symmetric_and_the_kernel_input():
    gen = torch.Generator().manual_seed(1)
    c = 16
    x = torch.randn(100, c, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 6, c).double()
    scale, zero = fit_ptf(x, 8, symmetric=True)
    assert zero is None
    assert math.isclose(scale.min().item() * 2**PTF_K, x.abs().max().item() / 127, rel_tol=1e-12)
    codes = ptf_integers(x, scale, None, 8)
    assert codes.min() >= -128 and codes.max() <= 127
    inside = x.abs() <= 127 * scale
    assert ((codes * scale - x).abs()[inside] <= scale.expand_as(x)[inside] / 2 + 1e-12).all()
    # 16-bit asymmetric codes minus the zero point fit the kernels' |x| < 2^16
    scale16, zero16 = fit_ptf(x, 16)
    x16 = ptf_integers(x * 100, scale16, zero16, 16)
    assert x16.abs().max() < 2**16 and x16.abs().max() >= 2**15


def test_fit_ptf_rejects_bad_input():
    with pytest.raises(ConfigError):
        fit_ptf(torch.randn(4, 3), 1)
    with pytest.raises(ConfigError):
        fit_ptf(torch.randn(4, 3), 17)
    with pytest.raises(ConfigError):
        fit_ptf(torch.zeros(0, 3), 8)
    with pytest.raises(NumericalError):
        fit_ptf(torch.tensor([[0.0, float("nan")]]), 8)
    scale, zero = fit_ptf(torch.zeros(5, 3), 8)  # a constant input: the observer's eps step
    assert (scale > 0).all() and torch.isfinite(scale).all() and zero is not None


# --------------------------------------------------------------------------- registry


def test_kernels_are_registered():
    assert base._KERNELS[("fqvit", "softmax")] is LogIntSoftmax
    assert base._KERNELS[("fqvit", "layernorm")] is PTFLayerNorm
    assert ("fqvit", "gelu") not in base._KERNELS
