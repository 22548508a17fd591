"""The wide symmetric format of integer kernel inputs (16 bits, margin 2)."""

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.quantizers import KERNEL_INPUT_BITS, UniformQuantizer, make_spec


def test_fit_is_symmetric_with_margin():
    x = torch.tensor([-3.0, 0.5, 1.0, 6.0])
    q = make_spec("kernel_input").fit(x)
    assert isinstance(q, UniformQuantizer) and q.bits == KERNEL_INPUT_BITS == 16
    top = 2**15 - 1
    assert float(q.scale) == pytest.approx(2 * 6.0 / top, rel=1e-6)
    assert int(q.zero_point) == 2**15
    codes = q.to_integer(x).mantissa
    assert int(codes.abs().max()) <= top // 2 + 1  # margin 2: the calibration peak lands at half range
    # held-out inputs up to twice the peak are not clamped; beyond, they clamp to |q| <= 2^15
    wide = q.to_integer(torch.tensor([11.9, -11.9, 1e6, -1e6])).mantissa
    assert wide[:2].abs().max() < top and int(wide[2]) == 2**15 - 1 and int(wide[3]) == -(2**15)


def test_levels_and_error():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    q = make_spec("kernel_input").fit(x)
    assert q.max_levels == 2**16
    err = (q(x) - x).abs().max()
    assert err <= float(q.scale) / 2 + 1e-5  # rounding only (up to float32 error): no clipping on the fitted data


@pytest.mark.parametrize("bits", [7, 17])
def test_bit_range(bits):
    with pytest.raises(ConfigError, match="kernel_input bit width must be between 8 and 16"):
        make_spec("kernel_input", bits=bits)


def test_bad_margin_and_zero_input():
    with pytest.raises(ConfigError, match="margin must be >= 1"):
        make_spec("kernel_input", margin=0.5)
    q = make_spec("kernel_input").fit(torch.zeros(8))
    assert torch.equal(q(torch.zeros(8)), torch.zeros(8))
