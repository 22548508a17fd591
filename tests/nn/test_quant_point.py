"""QuantPoint: identity in FLOAT, fake-quant with the installed quantizer in QUANTIZE, level counts.

A point no longer fits itself: the calibration pipeline fits its spec along ``point.axis(granularity)``
and installs the result with ``set_quantizer`` (here done by hand, as :func:`_fit`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitquant import qconfig as qc
from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError
from vitquant.nn import Mode, QuantLinear, QuantMatMul, QuantPoint, quant_points, set_level_tracking, set_mode
from vitquant.nn.linear import QuantConv2d
from vitquant.qconfig import QConfig, attention_spec, repq_vit_qconfig
from vitquant.quantizers import QuantSpec, UniformQuantizer, UniformSpec


def _point(
    spec: QuantSpec | None = UniformSpec(bits=4), channel_dim: int | None = -1, head_dim: int | None = None
) -> QuantPoint:
    point = QuantPoint("linear_input", channel_dim=channel_dim, head_dim=head_dim)
    point.spec = spec
    point.point_name = "test.point"
    return point


def _fit(point: QuantPoint, x: torch.Tensor):
    """What the pipeline does at one point: fit its spec along the point's axis, install, quantize."""
    assert point.spec is not None
    quantizer = point.spec.fit(x, axis=point.axis(point.spec.granularity), where=point.point_name)
    point.set_quantizer(quantizer)
    point.mode = Mode.QUANTIZE
    return quantizer


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
    _fit(point, x)
    assert not torch.equal(point(x), x)
    point.mode = Mode.FLOAT
    y = torch.randn(4, 6) * 3
    assert torch.equal(point(y), y)


def test_quantize_before_calibration_raises():
    point = _point()
    point.mode = Mode.QUANTIZE
    with pytest.raises(RuntimeError, match="test.point"):
        point(torch.randn(2, 3))


def test_point_has_only_float_and_quantize_modes():
    """Fitting is the pipeline's job: there is no calibrate mode or method on the point."""
    assert [m.value for m in Mode] == ["float", "quantize"]
    assert not hasattr(QuantPoint("linear_input"), "calibrate")


def test_axis_by_granularity():
    point = _point(channel_dim=-2, head_dim=1)
    assert point.axis("tensor") is None
    assert point.axis("channel") == -2
    assert point.axis("head") == 1
    assert QuantPoint("linear_input").head_dim is None  # default: no head axis


@pytest.mark.parametrize(("channel_dim", "head_dim", "granularity"), [(-1, None, "head"), (None, 1, "channel")])
def test_axis_missing_for_granularity_raises(channel_dim, head_dim, granularity):
    point = _point(UniformSpec(bits=4, granularity=granularity), channel_dim=channel_dim, head_dim=head_dim)
    with pytest.raises(ConfigError, match=f"test.point has no {granularity} axis"):
        point.axis(granularity)
    assert point.axis("tensor") is None  # per tensor always works


def test_fitted_point_fake_quantizes_and_does_not_refit():
    point = _point(UniformSpec(bits=4))
    x = torch.randn(8, 10, 6)
    quantizer = _fit(point, x)
    assert isinstance(point.quantizer, UniformQuantizer) and not point.quantizer.per_channel
    assert point.quantizer is quantizer
    out = point(x)
    assert torch.equal(out, quantizer(x))
    assert len(torch.unique(out)) <= 16
    assert not torch.equal(out, x)
    # QUANTIZE reuses the installed quantizer: same output, no refit on new data, nothing recorded
    assert torch.equal(point(x), out)
    point(x * 100)
    assert point.quantizer is quantizer
    assert point.observed_min is None and point.observed_max is None


@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_per_channel_fit_along_the_channel_axis(channel_dim):
    point = _point(UniformSpec(bits=4, granularity="channel"), channel_dim=channel_dim)
    x = torch.randn(4, 5, 6) * torch.arange(1, 7).float()  # channel scales differ along the last dim
    x = x if channel_dim == -1 else x.movedim(-1, 1)  # channels at dim 1: [4, 6, 5]
    _fit(point, x)
    channels = x.shape[channel_dim]
    assert point.quantizer.per_channel and point.quantizer.scale.numel() == channels
    # the parameters broadcast along the channel axis: each channel is quantized with its own (Δ, z)
    ref = x.movedim(channel_dim, 0)
    out = point(x).movedim(channel_dim, 0)
    for c in range(channels):
        single = UniformSpec(bits=4).fit(ref[c])
        assert torch.equal(out[c], single(ref[c])), c


def test_per_head_fit_along_the_head_axis():
    point = _point(UniformSpec(bits=4, granularity="head"), channel_dim=-1, head_dim=1)
    x = torch.randn(2, 3, 5, 4) * torch.tensor([1.0, 10.0, 100.0]).reshape(3, 1, 1)  # [B, heads, N, d]
    _fit(point, x)
    assert point.quantizer.scale.shape == (3, 1, 1)
    out = point(x)
    for h in range(3):
        assert torch.equal(out[:, h], UniformSpec(bits=4).fit(x[:, h])(x[:, h])), h


def test_refit_replaces_the_quantizer():
    point = _point()
    first = _fit(point, torch.rand(100))
    second = _fit(point, torch.rand(100) * 10)
    assert point.quantizer is second and second is not first
    big = torch.tensor([5.0])
    assert float(point(big)) == pytest.approx(5.0, abs=float(second.scale))  # the new range covers 5
    assert float(first(big)) <= 1.5  # the first one clipped it


@pytest.mark.parametrize(
    "spec",
    [
        UniformSpec(bits=4),
        UniformSpec(bits=3, granularity="channel"),
        attention_spec("sqrt2-17", 4),
        attention_spec("sqrt2-16", 4),
        attention_spec("bitlog2-half-17", 4),
        attention_spec("bitlog2-single-16", 4),
        attention_spec("adalog", 4),
    ],
    ids=lambda s: f"{s.name}-{s.bits}",
)
def test_level_tracking_counts_used_codes(spec):
    point = _point(spec)
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(16, 32, generator=g).softmax(dim=-1) * 4  # probability-like, some large
    calib = calib.clamp(max=1.0)
    _fit(point, calib)
    point.track_levels = True
    batches = [torch.randn(16, 32, generator=g).mul(3).softmax(dim=-1) for _ in range(3)]
    outputs = [point(b) for b in batches]
    counts = point.level_counts
    max_levels = point.quantizer.max_levels
    # one bin per level, every element counted exactly once, across batches
    assert counts.shape == (max_levels,)
    assert int(counts.sum()) == sum(b.numel() for b in batches)
    assert 1 <= point.levels_used <= max_levels
    if spec.granularity == "tensor":  # per tensor: used codes == distinct output values
        distinct = torch.unique(torch.cat([o.reshape(-1) for o in outputs]))
        assert point.levels_used == len(distinct)


def test_level_tracking_off_by_default_and_reset_on_enable():
    model = nn.Sequential(_point(), _point())
    x = torch.randn(4, 8)
    for p in model:
        _fit(p, x)
        p.mode = Mode.FLOAT
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
    _fit(point, torch.randn(10))
    point.track_levels = True
    point(torch.randn(10))
    assert point.level_counts is not None
    point.set_quantizer(UniformQuantizer(4, torch.tensor(0.1), torch.tensor(8.0)))
    assert point.level_counts is None


def test_set_mode_reaches_points_and_quantized_layers():
    linear = QuantLinear.from_float(nn.Linear(4, 3), "linear_input")
    conv = QuantConv2d.from_float(nn.Conv2d(3, 2, 2), "patch_embed_input")
    matmul = QuantMatMul(qc.POST_SOFTMAX, qc.MATMUL_INPUT)
    model = nn.Sequential(nn.Sequential(_point(), linear), conv, matmul)
    targets = [model[0][0], linear, linear.input_quant, conv, conv.input_quant, matmul.a_quant, matmul.b_quant]
    for mode in (Mode.QUANTIZE, Mode.FLOAT, Mode.QUANTIZE, Mode.FLOAT):
        set_mode(model, mode)
        assert [t.mode for t in targets] == [mode] * len(targets)
    assert [name for name, _ in quant_points(model)] == [
        "0.0", "0.1.input_quant", "1.input_quant", "2.a_quant", "2.b_quant"]


# ------------------------------------------------------------- the pipeline records the observed range
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_pipeline_records_observed_range_per_row(tiny, kind):
    """quantize_model records, at every point, the min/max of the input it was fitted on: one value for
    a per-tensor spec, one per channel / per head otherwise (shaped like the quantizer's parameters).

    Without reparameterization the quantized model's forward on the calibration images feeds every
    point exactly the input it was fitted on, so the recorded range is checked against that input.
    """
    base = repq_vit_qconfig(8, 8, "sqrt2-17")
    cfg = QConfig(specs={**base.specs, qc.MATMUL_INPUT: UniformSpec(bits=8, granularity="head")}, reparam=False)
    model = tiny.model(kind)
    x = tiny.images(4, kind)
    result = quantize_model(model, x, cfg)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        p.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
        for name, p in quant_points(result.model)
    ]
    with torch.no_grad():
        result.model(x)
    for h in hooks:
        h.remove()

    granularities = set()
    for name, point in quant_points(result.model):
        granularity = point.spec.granularity
        granularities.add(granularity)
        axis = point.axis(granularity)
        inputs = seen[name]
        if axis is None:
            lo, hi = inputs.amin(), inputs.amax()
        else:
            rows = inputs.movedim(axis, 0).reshape(inputs.shape[axis], -1)
            lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        assert point.observed_min.shape == point.observed_max.shape, name
        assert point.observed_min.numel() == lo.numel(), name
        if isinstance(point.quantizer, UniformQuantizer):  # same layout as the fitted parameters
            assert point.observed_min.shape == point.quantizer.scale.shape, name
        assert torch.equal(point.observed_min.reshape(-1), lo.reshape(-1)), name
        assert torch.equal(point.observed_max.reshape(-1), hi.reshape(-1)), name
    assert granularities == {"tensor", "channel", "head"}

