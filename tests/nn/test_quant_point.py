"""QuantPoint: identity in FLOAT, observer + fake-quant in CALIBRATE, fake-quant in QUANTIZE, level counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitquant.nn import Mode, QuantLinear, QuantPoint, quant_points, set_level_tracking, set_mode
from vitquant.nn.linear import QuantConv2d
from vitquant.qconfig import QuantSpec, attention_spec
from vitquant.quantizers import UniformQuantizer


def _point(spec: QuantSpec | None = QuantSpec("uniform", 4), channel_dim: int | None = -1) -> QuantPoint:
    point = QuantPoint("linear_input", channel_dim=channel_dim)
    point.spec = spec
    point.point_name = "test.point"
    return point


def test_float_mode_is_identity_even_without_spec():
    point = QuantPoint("linear_input")
    assert point.mode is Mode.FLOAT
    x = torch.randn(3, 5, 7)
    out = point(x)
    assert out is x  # no copy, no arithmetic
    assert point.quantizer is None and point.observed_min is None


def test_float_mode_is_identity_after_calibration():
    point = _point()
    x = torch.randn(4, 6)
    point.mode = Mode.CALIBRATE
    point(x)
    point.mode = Mode.FLOAT
    y = torch.randn(4, 6) * 3
    assert torch.equal(point(y), y)


def test_quantize_before_calibration_raises():
    point = _point()
    point.mode = Mode.QUANTIZE
    with pytest.raises(RuntimeError, match="test.point"):
        point(torch.randn(2, 3))


def test_calibrate_without_spec_raises():
    point = QuantPoint("linear_input")
    point.mode = Mode.CALIBRATE
    with pytest.raises(RuntimeError, match="no spec"):
        point(torch.randn(2, 3))


def test_calibrate_fits_records_range_and_fake_quantizes():
    point = _point(QuantSpec("uniform", 4))
    x = torch.randn(8, 10, 6)
    point.mode = Mode.CALIBRATE
    out = point(x)
    assert isinstance(point.quantizer, UniformQuantizer) and not point.quantizer.per_channel
    assert point.observed_min.shape == () and point.observed_max.shape == ()
    assert point.observed_min.item() == x.min().item()
    assert point.observed_max.item() == x.max().item()
    # CALIBRATE returns the fake-quantized tensor (downstream points calibrate on quantized inputs)
    assert torch.equal(out, point.quantizer(x))
    assert len(torch.unique(out)) <= 16
    assert not torch.equal(out, x)
    # QUANTIZE reuses the fitted quantizer: same output, no refit on new data
    quantizer = point.quantizer
    point.mode = Mode.QUANTIZE
    assert torch.equal(point(x), out)
    point(x * 100)
    assert point.quantizer is quantizer
    assert point.observed_max.item() == x.max().item()


@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_calibrate_per_channel_records_per_channel_range(channel_dim):
    point = _point(QuantSpec("uniform", 4, per_channel=True), channel_dim=channel_dim)
    x = torch.randn(4, 5, 6) * torch.arange(1, 7).float()  # channel scales differ along the last dim
    x = x if channel_dim == -1 else x.movedim(-1, 1)  # channels at dim 1: [4, 6, 5]
    point.mode = Mode.CALIBRATE
    point(x)
    channels = x.shape[channel_dim]
    assert point.observed_min.shape == (channels,) and point.observed_max.shape == (channels,)
    ref = x.movedim(channel_dim, 0).reshape(channels, -1)
    assert torch.equal(point.observed_min, ref.amin(dim=1))
    assert torch.equal(point.observed_max, ref.amax(dim=1))
    assert point.quantizer.per_channel and point.quantizer.scale.numel() == channels


def test_recalibration_replaces_the_quantizer():
    point = _point()
    point.mode = Mode.CALIBRATE
    point(torch.rand(100))
    first = point.quantizer
    point(torch.rand(100) * 10)
    assert point.quantizer is not first
    assert point.observed_max.item() > 1.0


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec("uniform", 4),
        QuantSpec("uniform", 3, per_channel=True),
        attention_spec("sqrt2-17", 4),
        attention_spec("sqrt2-16", 4),
        attention_spec("bitlog2-half-17", 4),
        attention_spec("bitlog2-single-16", 4),
    ],
    ids=lambda s: f"{s.name}-{s.bits}",
)
def test_level_tracking_counts_used_codes(spec):
    point = _point(spec)
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(16, 32, generator=g).softmax(dim=-1) * 4  # probability-like, some large
    calib = calib.clamp(max=1.0)
    point.mode = Mode.CALIBRATE
    point(calib)
    point.mode = Mode.QUANTIZE
    point.track_levels = True
    batches = [torch.randn(16, 32, generator=g).mul(3).softmax(dim=-1) for _ in range(3)]
    outputs = [point(b) for b in batches]
    counts = point.level_counts
    max_levels = point.quantizer.max_levels
    # one bin per level, every element counted exactly once, across batches
    assert counts.shape == (max_levels,)
    assert int(counts.sum()) == sum(b.numel() for b in batches)
    assert 1 <= point.levels_used <= max_levels
    if not spec.per_channel:  # per tensor: used codes == distinct output values
        distinct = torch.unique(torch.cat([o.reshape(-1) for o in outputs]))
        assert point.levels_used == len(distinct)


def test_level_tracking_off_by_default_and_reset_on_enable():
    model = nn.Sequential(_point(), _point())
    for p in model:
        p.mode = Mode.CALIBRATE
    x = torch.randn(4, 8)
    model(x)
    set_mode(model, Mode.QUANTIZE)
    model(x)
    assert all(p.level_counts is None and p.levels_used is None for p in model)
    set_level_tracking(model, True)
    model(x)
    first = [int(p.level_counts.sum()) for p in model]
    assert first == [x.numel(), x.numel()]
    set_level_tracking(model, True)  # enabling again resets the counts
    assert all(p.level_counts is None for p in model)
    model(x)
    set_level_tracking(model, False)
    model(x)  # not counted
    assert [int(p.level_counts.sum()) for p in model] == first


def test_set_quantizer_resets_level_counts():
    point = _point()
    point.mode = Mode.CALIBRATE
    point(torch.randn(10))
    point.mode = Mode.QUANTIZE
    point.track_levels = True
    point(torch.randn(10))
    assert point.level_counts is not None
    point.set_quantizer(UniformQuantizer(4, torch.tensor(0.1), torch.tensor(8.0)))
    assert point.level_counts is None


def test_set_mode_reaches_points_and_quantized_layers():
    linear = QuantLinear.from_float(nn.Linear(4, 3), "linear_input")
    conv = QuantConv2d.from_float(nn.Conv2d(3, 2, 2), "patch_embed_input")
    model = nn.Sequential(nn.Sequential(_point(), linear), conv)
    targets = [model[0][0], linear, linear.input_quant, conv, conv.input_quant]
    for mode in (Mode.CALIBRATE, Mode.QUANTIZE, Mode.FLOAT):
        set_mode(model, mode)
        assert [t.mode for t in targets] == [mode] * len(targets)
    assert [name for name, _ in quant_points(model)] == ["0.0", "0.1.input_quant", "1.input_quant"]
