"""ASQNR as the Mixed Non-linear Quantization paper defines it: 20·log10 of the mean per-image ratio."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.nonlinear.sqnr import MAX_RATIO, ASQNRMeter, asqnr


def _x(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 5, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("e", [0.5, 0.1, 0.01, -0.03])
def test_relative_error_known_value(e):
    x = _x(4)
    value = asqnr(x, x * (1 + e))  # noise e²x²: ratio 1/e² for every image
    assert value == pytest.approx(20 * math.log10(1 / e**2), rel=1e-12)
    assert value == pytest.approx(-40 * math.log10(abs(e)), rel=1e-12)


def test_mean_of_per_image_ratios():
    x = _x(2, seed=1)
    q = torch.stack([x[0] * 1.1, x[1] * 1.5])  # ratios 100 and 4
    expected = 20 * math.log10((100 + 4) / 2)
    assert asqnr(x, q) == pytest.approx(expected, rel=1e-12)
    # not the ratio of the pooled energies, nor the mean of per-image dB values
    pooled = float(x.pow(2).sum() / (x - q).pow(2).sum())
    assert abs(asqnr(x, q) - 20 * math.log10(pooled)) > 1.0
    assert abs(asqnr(x, q) - (20 * math.log10(100) + 20 * math.log10(4)) / 2) > 1.0


def test_meter_accumulates_over_batches():
    x = _x(3, seed=2)
    q = torch.stack([x[0] * 1.1, x[1] * 1.5, x[2] * 0.99])
    meter = ASQNRMeter()
    meter.update(x[:1], q[:1])
    meter.update(x[1:], q[1:])
    assert meter.count == 3
    assert meter.value == pytest.approx(asqnr(x, q), rel=1e-12)
    assert meter.value == pytest.approx(20 * math.log10((100 + 4 + 1e4) / 3), rel=1e-12)


def test_float32_inputs_are_measured_in_float64():
    x = _x(2, seed=3).to(torch.float32)
    q = x * 1.25
    assert asqnr(x, q) == pytest.approx(20 * math.log10(16), rel=1e-6)


def test_zero_error_is_capped_and_finite():
    x = _x(2, seed=4)
    value = asqnr(x, x.clone())
    assert math.isfinite(value)
    assert value == pytest.approx(20 * math.log10(MAX_RATIO)) and MAX_RATIO == 1e12
    # one exact image next to one with ratio 100: the exact one counts as the cap
    q = torch.stack([x[0], x[1] * 1.1])
    assert asqnr(x, q) == pytest.approx(20 * math.log10((MAX_RATIO + 100) / 2), rel=1e-12)
    # a tiny but non-zero error is capped too
    tiny = x.clone()
    tiny[0, 0, 0, 0] += 1e-150
    assert asqnr(x[:1], tiny[:1]) == pytest.approx(20 * math.log10(MAX_RATIO))


def test_zero_signal():
    x = torch.zeros(2, 4)
    assert asqnr(x, x + 1) == -math.inf


def test_shape_mismatch_raises():
    x = _x(2)
    with pytest.raises(ValueError, match="different shapes"):
        asqnr(x, x[:, :2])
    with pytest.raises(ValueError, match="different shapes"):
        ASQNRMeter().update(x, x.reshape(2, -1))


def test_empty_meter_raises():
    meter = ASQNRMeter()
    with pytest.raises(ValueError, match="no images"):
        meter.value
    meter.update(_x(1), _x(1) * 1.1)
    assert meter.value == pytest.approx(40.0)
