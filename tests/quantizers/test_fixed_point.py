"""The fixed-point residual quantizer: its fit, its level bound, its clamp and bad input."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.quantizers import FixedPointQuantizer, make_spec
from vitquant.quantizers.spec import spec_from_dict


def test_fit_is_margin_times_max_over_top():
    x = torch.tensor([[-3.0, 0.5], [1.0, 2.0]])
    q = make_spec("fixed_point").fit(x)
    top = 2**23 - 1
    assert q.bits == 24 and q.max_levels == 2**24 - 1
    assert float(q.scale) == pytest.approx(2.0 * 3.0 / top, rel=1e-7)
    # no calibration value is clamped: each is represented within one step (half a step of rounding,
    # and x · (1/S) in float32 carries up to half a code of error near 2^23 codes)
    exact = q.to_integer(x).dequantize()  # float64 (forward rounds it once more to float32)
    assert (exact - x.double()).abs().max() <= float(q.scale)
    assert int(q.codes(x).max()) < 2 * top


def test_levels_bound_and_symmetric_clamp():
    q = FixedPointQuantizer(8, torch.tensor(0.5))
    x = torch.linspace(-1000, 1000, 100_001)
    codes = q.codes(x)
    assert codes.unique().numel() == q.max_levels == 255  # the bound is reached, not exceeded
    assert float(q(x).max()) == 127 * 0.5 and float(q(x).min()) == -127 * 0.5


def test_per_row_fit():
    x = torch.stack([torch.linspace(-1, 1, 50), torch.linspace(-8, 2, 50)])
    q = make_spec("fixed_point", bits=16, granularity="channel").fit(x, axis=0)
    assert q.scale.shape == (2, 1)
    torch.testing.assert_close(q.scale.reshape(-1), torch.tensor([2.0, 16.0]) / (2**15 - 1))


def test_all_zero_input_gets_a_tiny_step_and_stays_exact():
    q = make_spec("fixed_point").fit(torch.zeros(4, 4))
    assert float(q.scale) > 0
    assert torch.equal(q(torch.zeros(3)), torch.zeros(3))


@pytest.mark.parametrize("bits", [7, 32, 4])
def test_impossible_bit_widths_are_refused(bits):
    with pytest.raises(ConfigError, match="between 8 and 31"):
        make_spec("fixed_point", bits=bits)
    with pytest.raises(ConfigError, match="between 8 and 31"):
        FixedPointQuantizer(bits, torch.tensor(1.0))


def test_bad_margin_and_scale():
    with pytest.raises(ConfigError, match="margin"):
        make_spec("fixed_point", margin=0.5)
    with pytest.raises(ConfigError, match="scale"):
        FixedPointQuantizer(24, torch.tensor(0.0))


def test_spec_round_trips_through_dict():
    spec = make_spec("fixed_point", bits=20, margin=3.0)
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec.name == "fixed20"
