"""FQ-ViT's PTF spec: per-channel scales s·2^α (α in 0..3), at most 2^b levels per channel, integer views."""

from __future__ import annotations

import pytest
import torch

from vitquant.kernels.fqvit import PTF_K
from vitquant.quantizers import UniformQuantizer
from vitquant.quantizers.ptf import PTFSpec
from vitquant.quantizers.spec import make_spec, spec_from_dict, spec_kinds

pytestmark = pytest.mark.usefixtures("single_thread")

C = 32


def _residual(seed: int = 0, tokens: int = 200) -> torch.Tensor:
    """[2, tokens, C] with per-channel ranges spread over 2^0..2^5 and per-channel offsets."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.exp2(torch.arange(C, dtype=torch.float32) % 6)
    return torch.randn(2, tokens, C, generator=g) * spread + torch.randn(C, generator=g) * 2


def _fit(x: torch.Tensor, bits: int) -> UniformQuantizer:
    spec = make_spec("ptf", bits=bits)
    return spec.fit(x, axis=-1)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_scales_are_one_step_times_power_of_two(bits):
    x = _residual(bits)
    q = _fit(x, bits)
    assert isinstance(q, UniformQuantizer) and q.bits == bits
    assert q.scale.shape == (C,) and q.scale.dtype == torch.float32
    # s·2^K = (max - min)/(2^b - 1) over all channels (float64), then cast to float32
    top = (x.double().max() - x.double().min()) / (2**bits - 1)
    s = (top / 2**PTF_K).to(torch.float32)
    alpha = torch.log2(q.scale / s)
    assert torch.equal(alpha, alpha.round()), "scales are not s·2^α exactly"
    assert int(alpha.min()) >= 0 and int(alpha.max()) <= PTF_K == 3
    assert len(set(alpha.tolist())) >= 2, "the data should give different factors per channel"
    # one zero point for all channels, an integer
    assert q.zero_point.shape == (C,)
    assert torch.equal(q.zero_point, q.zero_point.round())
    assert torch.unique(q.zero_point).numel() == 1


@pytest.mark.parametrize("bits", [3, 8])
def test_at_most_2_pow_bits_levels_per_channel(bits):
    x = _residual(10 + bits, tokens=2000)
    q = _fit(x, bits)
    codes = q.codes(x)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    out = q(x)
    flat_codes = codes.reshape(-1, C)
    flat_out = out.reshape(-1, C)
    for c in range(C):
        assert torch.unique(flat_codes[:, c]).numel() <= 2**bits
        assert torch.unique(flat_out[:, c]).numel() <= 2**bits
    # codes and forward describe the same values
    assert torch.equal((codes.to(torch.float32) - q.zero_point) * q.scale, out)
    # the widest channels use most of the grid (the bound is not met trivially)
    assert max(torch.unique(flat_codes[:, c]).numel() for c in range(C)) > 2 ** (bits - 1)


def test_integer_view_gives_integers():
    x = _residual(3)
    q = _fit(x, 8)
    x_hat = q(x)
    ints, scale = q.integer_view(x_hat)
    assert ints.dtype == torch.float64 and scale.dtype == torch.float64
    assert torch.equal(ints, ints.round())
    assert torch.equal(scale, q.scale.double())
    assert int(ints.min()) >= int(q.code_min.min()) and int(ints.max()) <= int(q.code_max.max())
    assert torch.equal(ints, (q.codes(x) - q.zero_point.to(torch.int64)).double())  # q - z
    assert torch.equal(ints.to(torch.float32) * q.scale, x_hat)


def test_registry_and_round_trip():
    assert "ptf" in spec_kinds()
    spec = make_spec("ptf", bits=8)
    assert isinstance(spec, PTFSpec) and spec.kind == "ptf"
    assert spec.granularity == "channel" and spec.max_levels == 256
    assert spec.name == "ptf-per-channel" and spec.format_name == "ptf"
    data = spec.to_dict()
    assert data["kind"] == "ptf" and data["max_levels"] == 256 and data["search"] == "percentile"
    again = spec_from_dict(data)
    assert again == spec and type(again) is PTFSpec
    assert spec_from_dict(make_spec("ptf", bits=5).to_dict()).bits == 5
