"""The grid of a fitted quantizer (the values it emits on a sweep): known levels of uniform and AdaLog
quantizers, one row per channel or head, never more values than the format's level bound, non-finite
outputs left out, and the probe tensor's layout."""

from __future__ import annotations

import pytest
import torch
from quantizer_cases import CASE_IDS, CASES, GAIN_C

from vitquant.errors import ConfigError
from vitquant.quantizers import AdaLogQuantizer, LogSqrt2Quantizer, UniformQuantizer, make_spec
from vitquant.quantizers.grid import Grid, grid_of, linear_sweep, log_sweep, probe

pytestmark = pytest.mark.usefixtures("single_thread")

MAPS = (8, 3, 8, 8)  # attention-map-like data: 3 heads (or channels) along axis 1


def _fit_data(signed: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    if not signed:
        return torch.softmax(torch.randn(MAPS, generator=gen) * 3, dim=-1)
    return torch.randn(MAPS, generator=gen) * torch.tensor([0.1, 1.0, 9.0]).reshape(3, 1, 1)


def _fitted(kind: str, signed: bool, **options):
    return make_spec(kind, bits=4, **options).fit(_fit_data(signed), axis=1)


def test_uniform_per_tensor_grid_is_its_levels():
    q = UniformQuantizer(4, torch.tensor(0.37), torch.tensor(6.0))
    levels = ((torch.arange(16) - 6) * torch.tensor(0.37)).tolist()  # the float32 products forward computes
    grid = grid_of(q, (2, 17, 48), None, linear_sweep(-4.0, 4.0))  # beyond both clamps
    assert grid == Grid(values=levels, rows=1, distinct=1)
    # a narrower sweep reaches the levels whose rounding cell [l - Δ/2, l + Δ/2] meets [-1, 1]
    narrow = grid_of(q, (2, 17, 48), None, linear_sweep(-1.0, 1.0))
    assert narrow.values == [v for v in levels if abs(v) <= 1.0 + 0.37 / 2]
    assert narrow.values[0] == pytest.approx(-1.11) and narrow.values[-1] == pytest.approx(1.11)


def test_fitted_uniform_per_tensor_grid_is_its_levels():
    q = _fitted("uniform", signed=True)
    levels = ((torch.arange(16) - q.zero_point) * q.scale).tolist()
    assert grid_of(q, MAPS, 1, linear_sweep(-60.0, 60.0)) == Grid(values=levels, rows=3, distinct=1)


def test_fitted_per_channel_grid_has_a_row_per_channel():
    q = _fitted("uniform", signed=True, granularity="channel")
    assert q.scale.shape == (3, 1, 1)
    grid = grid_of(q, MAPS, 1, linear_sweep(-60.0, 60.0))
    assert grid.rows == 3 and grid.distinct == 3  # three ranges (0.1, 1, 9): three grids
    assert grid.values == ((torch.arange(16) - q.zero_point[0]) * q.scale[0]).reshape(-1).tolist()


def test_channels_on_the_last_axis():
    q = UniformQuantizer(3, 0.5 * GAIN_C, torch.tensor([0.0, 2, 4, 7, -1]))  # 5 channels, last axis
    grid = grid_of(q, (2, 17, 5), -1, linear_sweep(-0.1, 0.1))  # finer than channel 0's step
    assert grid.rows == 5 and 2 <= grid.distinct <= 5
    assert grid.values == (torch.arange(8) * (0.5 * GAIN_C[0])).tolist()  # channel 0: step 0.005, zero point 0


def test_fitted_per_head_adalog_grid_is_row_0_of_its_table():
    q = _fitted("adalog", signed=False, granularity="head")
    assert isinstance(q, AdaLogQuantizer)
    table = q.levels()  # [heads, 2^b + 1]
    grid = grid_of(q, MAPS, 1, log_sweep())
    assert grid.rows == 3
    assert grid.values == torch.unique(table[0]).tolist()
    assert len(grid.values) == q.max_levels == 17
    assert grid.distinct == len({tuple(torch.unique(row).tolist()) for row in table})


def test_a_per_tensor_quantizer_gives_one_grid_over_every_row():
    q = _fitted("log_sqrt2", signed=False, variant=17)
    grid = grid_of(q, MAPS, 1, log_sweep())
    assert grid.rows == 3 and grid.distinct == 1
    assert grid.values == torch.unique(q.levels()).tolist()  # the dense log sweep reaches all 17 levels


@pytest.mark.parametrize(
    ("kind", "signed", "options"),
    [
        ("uniform", True, {"granularity": "channel"}),
        ("bitlog2", False, {"variant": 17, "half": True, "granularity": "head"}),
        ("bitlog2", False, {"variant": 16, "half": False}),
        ("log_sqrt2", False, {"variant": 17}),
        ("adalog", False, {"granularity": "head"}),
        ("twin_uniform", False, {"mode": "softmax", "granularity": "head"}),
        ("twin_uniform", True, {"mode": "gelu"}),
    ],
    ids=["uniform", "bitlog2-half17", "bitlog2-single16", "log_sqrt2", "adalog", "twin_softmax", "twin_gelu"],
)
def test_fitted_grids_stay_within_the_level_bound(kind, signed, options):
    q = _fitted(kind, signed, **options)
    for sweep in (log_sweep(), linear_sweep(-60.0, 60.0), linear_sweep(-1.0, 1.0)):
        grid = grid_of(q, MAPS, 1, sweep)
        assert 1 <= len(grid.values) <= q.max_levels
        assert grid.values == sorted(set(grid.values))
        assert grid.rows == 3 and 1 <= grid.distinct <= 3
    # on its own fitting data, the grid holds every value the quantizer emits on row 0
    emitted = torch.unique(q(_fit_data(signed))[:, 0]).tolist()
    sweep = torch.cat([log_sweep(), linear_sweep(-60.0, 60.0), _fit_data(signed)[:, 0].reshape(-1)])
    assert set(emitted) <= set(grid_of(q, MAPS, 1, sweep).values)


def _case_layout(name: str, x: torch.Tensor) -> tuple[tuple[int, ...], int | None]:
    """The data shape and row axis each quantizer_cases input has."""
    if name.endswith("-head"):
        return tuple(x.shape), 1
    if name.endswith("-channel-weight"):
        return tuple(x.shape), 0
    if name.endswith("-channel-last"):
        return tuple(x.shape), -1
    return (1, x.numel()), None


@pytest.mark.parametrize(("name", "quantizer", "x"), CASES, ids=CASE_IDS)
def test_every_kind_stays_within_the_level_bound(name, quantizer, x):
    shape, axis = _case_layout(name, x)
    sweep = torch.cat([log_sweep(1e-40, 1.0), linear_sweep(-200.0, 200.0), x.reshape(-1)])
    grid = grid_of(quantizer, shape, axis, sweep)
    rows = 1 if axis is None else shape[axis]
    assert grid.rows == rows and 1 <= grid.distinct <= rows
    assert 1 <= len(grid.values) <= quantizer.max_levels
    assert all(torch.isfinite(torch.tensor(grid.values)))


@pytest.mark.parametrize(
    "quantizer",
    [LogSqrt2Quantizer(4, 17, torch.tensor(0.8)), AdaLogQuantizer(4, torch.tensor(0.9), torch.tensor(37.0))],
    ids=["log_sqrt2", "adalog"],
)
def test_nan_outputs_of_negative_inputs_are_left_out(quantizer):
    sweep = torch.cat([-log_sweep(points=2000), log_sweep(points=2000)])  # [-1, 1], 0.0 and -0.0 included
    assert torch.isnan(quantizer(sweep[sweep < 0])).all()  # a log format has no negative values
    grid = grid_of(quantizer, (4, 17, 17), None, sweep)
    assert grid.values == grid_of(quantizer, (4, 17, 17), None, sweep[sweep >= 0]).values
    assert 0.0 in grid.values and min(grid.values) == 0.0


def test_probe_layout():
    sweep = torch.linspace(0, 1, 11, dtype=torch.float64)
    heads = probe((2, 3, 8, 8), 1, sweep)
    assert heads.shape == (1, 3, 1, 11) and heads.dtype == torch.float32
    assert torch.equal(heads[0, 2, 0], sweep.float())
    assert probe((2, 17, 5), -1, sweep).shape == (1, 11, 5)  # rows last: the sweep goes on the axis before
    assert probe((2, 17, 5), 2, sweep).shape == (1, 11, 5)
    assert probe((5, 7), 0, sweep).shape == (5, 11)
    assert probe((2, 17, 5), None, sweep).shape == (1, 1, 11)
    assert torch.equal(probe((4, 6), None, sweep)[0], sweep.float())


@pytest.mark.parametrize(
    ("shape", "axis", "message"),
    [
        ((5,), None, "at least 2 dims, got shape (5,)"),
        ((), None, "at least 2 dims, got shape ()"),
        ((2, 3, 8, 8), 4, "axis 4 is out of range for shape (2, 3, 8, 8)"),
        ((2, 3, 8, 8), -5, "axis -5 is out of range"),
    ],
)
def test_probe_shape_errors(shape, axis, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe(shape, axis, torch.linspace(0, 1, 5))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: log_sweep(0.0, 1.0), "0 < low < high"),
        (lambda: log_sweep(1.0, 1.0), "0 < low < high"),
        (lambda: linear_sweep(2.0, 1.0), "low < high"),
    ],
)
def test_empty_sweeps_are_refused(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
