"""reduce_logits: every softmax kernel takes wide integer inputs (the q@kᵀ product) exactly."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.kernels.arith import FLOAT, INT
from vitquant.kernels.base import LOGIT_RANGE, kernel_choices, make_kernel, reduce_logits

FAMILIES = kernel_choices("softmax")


def product_logits(gen: torch.Generator, rows: int, n: int, scale: float) -> torch.Tensor:
    """Integer products of 8-bit q and k over 64 channels (|x| up to ~2^21), like q@kᵀ."""
    q = torch.randint(-128, 128, (rows, 64), generator=gen)
    k = torch.randint(-128, 128, (64, n), generator=gen)
    return q @ k


@pytest.mark.parametrize("family", FAMILIES)
def test_wide_inputs_int_equals_float_and_stay_accurate(family):
    gen = torch.Generator().manual_seed(3)
    kernel = make_kernel(family, "softmax")
    for scale in (2e-6, 1e-5, 1e-4):
        x = product_logits(gen, 16, 197, scale)
        s = torch.tensor(scale, dtype=torch.float64)
        yi, si = kernel(INT.tensor(x), s, INT)
        yf, sf = kernel(FLOAT.tensor(x), s, FLOAT)
        assert yi.dtype == torch.int64 and torch.equal(yi.double(), yf) and torch.equal(si, sf)
        ref = torch.softmax(x.double() * scale, dim=-1)
        err = ((yf * sf) - ref).abs()
        if family == "fqvit":  # 4-bit log2 codes 2^-q, q <= 15: within a factor 1.5 (+ i-exp's 0.42 %)
            big = ref > 2.0**-14
            assert (err[big] / ref[big]).max().item() <= 0.5 * 1.0042 + 0.0042
            assert (yf * sf)[~big].max().item() <= 1.5 * 2.0**-14 if (~big).any() else True
        else:  # 8-bit outputs: within a few output steps of the exact softmax
            assert err.max().item() <= 4 * 2.0**-7


def test_reduction_is_a_no_op_for_fine_enough_inputs():
    """S >= T/2^15: no shift; only logits beyond T below the max are clamped."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(-2000, 2000, (8, 50), generator=gen)
    delta, s = reduce_logits(INT.tensor(x), 0.01, INT)
    assert s == 0.01
    d = math.ceil(LOGIT_RANGE / 0.01)
    assert torch.equal(delta, torch.clamp(x - x.amax(-1, keepdim=True), min=-d))


def test_reduction_bounds_and_grid():
    x = torch.tensor([[0, -(2**38), 2**38 - 5, 12345]], dtype=torch.int64)
    for scale in (1e-11 * 3, 1e-7, 1e-3, 1.0, 2.0**10):
        delta, s = reduce_logits(INT.tensor(x), scale, INT)
        assert delta.max().item() == 0 and delta.min().item() >= -(2**15)
        assert s >= scale and math.log2(s / scale) == round(math.log2(s / scale))  # a power-of-two step up
        assert math.ceil(LOGIT_RANGE / s) <= 2**15 or s == scale
        assert torch.equal(reduce_logits(FLOAT.tensor(x), scale, FLOAT)[0], delta.double())


def test_reduction_rejects():
    x = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ConfigError, match="2\\^40"):
        reduce_logits(x + 2**40, 0.1, INT)
    with pytest.raises(ConfigError, match="too small"):
        reduce_logits(x, 1e-13, INT)
    with pytest.raises(ConfigError, match="empty"):
        reduce_logits(torch.zeros(2, 0, dtype=torch.int64), 0.1, INT)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="finite and positive"):
            reduce_logits(x, bad, INT)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_head_scales_run_each_head_with_its_own(family):
    gen = torch.Generator().manual_seed(5)
    kernel = make_kernel(family, "softmax")
    x = torch.randint(-3000, 3000, (2, 3, 5, 7), generator=gen)
    scales = torch.tensor([1e-3, 4e-3, 2e-4], dtype=torch.float64)
    for given in (scales, scales.reshape(1, 3, 1, 1), scales.reshape(3, 1, 1)):
        y, y_scale = kernel(INT.tensor(x), given, INT)
        for h in range(3):
            yh, sh = kernel(INT.tensor(x[:, h]), scales[h], INT)
            assert torch.equal(y[:, h], yh) and torch.equal(y_scale, sh)
    with pytest.raises(ConfigError, match="one input scale"):
        kernel(INT.tensor(x[0, 0]), scales, INT)  # per-head scales need [B, H, N, N] logits
