"""Uniform affine quantizer: bit-exact against the slow formula and torch's fake-quant."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.uniform import UniformQuantizer

pytestmark = pytest.mark.usefixtures("single_thread")


def slow_reference(x: torch.Tensor, bits: int, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(clamp(round(x * (1/scale)) + z, 0, 2^b - 1) - z) * scale`` in float32, written out plainly."""
    scale = scale.to(torch.float32)
    zero = zero.to(torch.float32)
    q = torch.round(x * (1.0 / scale)) + zero
    q = torch.clamp(q, 0, 2**bits - 1)
    return (q - zero) * scale


def _data(gen: torch.Generator, *shape: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen) * 2.0
    flat = x.view(-1)
    flat[:7] = torch.tensor([0.0, -0.0, 1e-8, -1e-8, 50.0, -50.0, 0.5])
    return x


SCALES = [0.01, 0.1, 1.0 / 3.0, 0.37, 0.0123, 2.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_per_tensor_matches_reference(bits):
    gen = torch.Generator().manual_seed(bits)
    x = _data(gen, 4_000)
    qmax = 2**bits - 1
    zeros = [0, 1, qmax // 2, qmax, -1, -7, qmax + 1, qmax + 40, 300]
    for s in SCALES:
        for z in zeros:
            scale, zero = torch.tensor(s), torch.tensor(float(z))
            q = UniformQuantizer(bits, scale, zero)
            out = q(x)
            assert out.dtype == torch.float32 and out.shape == x.shape
            assert torch.equal(out, slow_reference(x, bits, scale, zero)), (bits, s, z)
            codes = q.codes(x)
            assert codes.dtype == torch.int64
            assert int(codes.min()) >= 0 and int(codes.max()) <= qmax
            # codes and forward describe the same values
            assert torch.equal((codes.to(torch.float32) - zero) * q.scale, out)
            assert torch.unique(out).numel() <= 2**bits


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matches_torch_fake_quantize_for_in_range_zero_points(bits):
    gen = torch.Generator().manual_seed(100 + bits)
    x = _data(gen, 16_000)
    qmax = 2**bits - 1
    for s in SCALES:
        for z in sorted({0, 1, qmax // 2, qmax}):
            q = UniformQuantizer(bits, torch.tensor(s), torch.tensor(float(z)))
            expected = torch.fake_quantize_per_tensor_affine(x, float(q.scale), z, 0, qmax)
            assert torch.equal(q(x), expected), (bits, s, z)


def _per_channel_params(gen: torch.Generator, c: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.rand(c, generator=gen) * 0.5 + 0.001
    qmax = 2**bits - 1
    # zero points deliberately including values outside [0, qmax]
    zero = torch.randint(-5, qmax + 6, (c,), generator=gen).to(torch.float32)
    zero[0], zero[1] = -3.0, float(qmax + 4)
    return scale, zero


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_weight_layout(bits):
    gen = torch.Generator().manual_seed(7 + bits)
    c = 12
    w = _data(gen, c, 300)
    scale, zero = _per_channel_params(gen, c, bits)
    q = UniformQuantizer(bits, scale.reshape(c, 1), zero.reshape(c, 1))
    assert q.per_channel
    out = q(w)
    assert torch.equal(out, slow_reference(w, bits, scale.reshape(c, 1), zero.reshape(c, 1)))
    for i in range(c):  # one channel at a time through a per-tensor quantizer
        single = UniformQuantizer(bits, scale[i], zero[i])
        assert torch.equal(out[i], single(w[i]))
        assert torch.unique(out[i]).numel() <= 2**bits
    codes = q.codes(w)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_per_channel_last_dim_activation_layout(bits):
    gen = torch.Generator().manual_seed(70 + bits)
    c = 8
    a = _data(gen, 4, 50, c)
    scale, zero = _per_channel_params(gen, c, bits)
    q = UniformQuantizer(bits, scale, zero)
    out = q(a)
    assert out.shape == a.shape
    assert torch.equal(out, slow_reference(a, bits, scale, zero))
    for i in range(c):
        single = UniformQuantizer(bits, scale[i], zero[i])
        assert torch.equal(out[..., i], single(a[..., i]))
        assert torch.unique(out[..., i]).numel() <= 2**bits
    codes = q.codes(a)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits


def test_levels_used_and_max_levels():
    q = UniformQuantizer(4, torch.tensor(0.1), torch.tensor(8.0))
    assert q.max_levels == 16 and q.qmax == 15
    x = torch.linspace(-5, 5, 10_001)
    assert q.levels_used(x) == 16 == torch.unique(q(x)).numel()
    assert q.levels_used(torch.zeros(10)) == 1


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_scale(scale):
    with pytest.raises(ConfigError):
        UniformQuantizer(4, torch.tensor(scale), torch.tensor(0.0))
    with pytest.raises(ConfigError):  # one bad channel is enough
        UniformQuantizer(4, torch.tensor([0.1, scale, 0.2]), torch.zeros(3))


@pytest.mark.parametrize("zero", [0.5, -1.25, 3.0001, float("nan"), float("inf")])
def test_bad_zero_point(zero):
    with pytest.raises(ConfigError):
        UniformQuantizer(4, torch.tensor(0.1), torch.tensor(zero))
    with pytest.raises(ConfigError):
        UniformQuantizer(4, torch.full((3,), 0.1), torch.tensor([0.0, zero, 2.0]))


@pytest.mark.parametrize("bits", [1, 17, 0, 24, 4.0, True])  # 9..16: kernel inputs (kernel_input spec)
def test_bad_bits(bits):
    with pytest.raises(ConfigError):
        UniformQuantizer(bits, torch.tensor(0.1), torch.tensor(0.0))


def test_python_scalars_accepted():
    q = UniformQuantizer(8, 0.05, 3)
    x = torch.linspace(-1, 1, 101)
    assert torch.equal(q(x), slow_reference(x, 8, torch.tensor(0.05), torch.tensor(3.0)))
