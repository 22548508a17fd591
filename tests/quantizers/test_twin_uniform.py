"""Twin uniform (PTQ4ViT): hand-computed levels, level bound and injective codes, spec fit and grid."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.errors import ConfigError, NumericalError
from vitquant.quantizers.spec import make_spec, spec_from_dict
from vitquant.quantizers.twin_uniform import (
    GELU_MIN_ABS,
    SOFTMAX_M,
    TwinGeluQuantizer,
    TwinSoftmaxQuantizer,
    TwinUniformSpec,
    gelu_negative_step,
    twin_sq_error,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _check_injective(quantizer, x: torch.Tensor) -> int:
    out, codes = quantizer(x), quantizer.codes(x)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < quantizer.max_levels
    n_codes = torch.unique(codes).numel()
    assert torch.unique(out).numel() == n_codes <= quantizer.max_levels
    pairs = torch.stack([codes.to(torch.float64), out.to(torch.float64)], dim=1)
    assert torch.unique(pairs, dim=0).shape[0] == n_codes  # one value per code
    assert not torch.signbit(out[out == 0]).any()  # zero is +0.0
    return n_codes


# --------------------------------------------------------------------------- softmax mode


@pytest.mark.parametrize(
    ("m", "inputs", "values", "codes"),
    [
        # Δ1 = Δ2 = 1/4, R1 below 3.5/4: 0, .25, .5, .75; R2 only adds 1.0 (code 7)
        (
            0,
            [0.1, 0.13, 0.5, 0.86, 0.875, 0.9, 1.0],
            [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0],
            [0, 1, 2, 3, 7, 7, 7],
        ),
        # Δ1 = 1/8, R1 below 0.4375; R2 level .25 is R1 level 2 (code 2), .5 -> 5, .75 -> 6, 1 -> 7
        (
            1,
            [0.06, 0.07, 0.3, 0.43, 0.44, 0.6, 0.63, 0.99],
            [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.75, 1.0],
            [0, 1, 2, 3, 5, 5, 6, 7],
        ),
        # Δ1 = 1/16, R1 below 0.21875: R2 levels .25 .5 .75 1 -> codes 4..7
        (2, [0.04, 0.2, 0.22, 0.3, 0.7], [0.0625, 0.1875, 0.25, 0.25, 0.75], [1, 3, 4, 4, 6]),
        # Δ1 = 1/32: R1 ends at 0.109375 and R2 has no 0, so 0.11 rounds up to 0.25
        (3, [0.02, 0.1, 0.11, 0.2], [0.03125, 0.09375, 0.25, 0.25], [1, 3, 4, 4]),
    ],
)
def test_softmax_hand_computed_3bit(m, inputs, values, codes):
    quantizer = TwinSoftmaxQuantizer(3, torch.tensor(float(m)))
    x = torch.tensor(inputs)
    assert quantizer(x).tolist() == values
    assert quantizer.codes(x).tolist() == codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_softmax_level_bound_random_and_adversarial(bits):
    gen = torch.Generator().manual_seed(bits)
    n = 2 ** (bits - 1)
    for m in list(range(0, 20)) + [40]:
        quantizer = TwinSoftmaxQuantizer(bits, torch.tensor(float(m)))
        assert quantizer.max_levels == 2**bits
        d1, d2 = 2.0 ** -(bits - 1 + m), 1.0 / n
        k = torch.arange(0, n + 2, dtype=torch.float64)
        edges = torch.cat([k * d1, (k + 0.5) * d1, k * d2, (k + 0.5) * d2, torch.tensor([(n - 0.5) * d1])])
        special = torch.tensor([0.0, -0.0, -0.3, -math.inf, 1.0, 1.5, math.inf, 1e-45, 1e-30])
        x = torch.cat([edges, edges * (1 - 1e-7), edges * (1 + 1e-7), special]).to(torch.float32)
        rand = torch.cat([torch.rand(5_000, generator=gen), torch.rand(5_000, generator=gen) * 4 * n * d1])
        used = _check_injective(quantizer, torch.cat([x, rand]))
        # every level is reached: n from R1, plus the R2 levels above R1's top
        r2_above = sum(1 for j in range(1, n + 1) if j * 2**m > n - 1)
        assert used == n + r2_above


def test_softmax_rejects_bad_m():
    for m in (-1.0, 0.5, float("nan"), 101.0):
        with pytest.raises(ConfigError):
            TwinSoftmaxQuantizer(4, torch.tensor(m))


def test_softmax_per_row_m():
    quantizer = TwinSoftmaxQuantizer(4, torch.tensor([[0.0], [3.0], [10.0]]))
    x = torch.rand(3, 1_000)
    out = quantizer(x)
    for r, m in enumerate((0, 3, 10)):
        assert torch.equal(out[r], TwinSoftmaxQuantizer(4, torch.tensor(float(m)))(x[r]))


# --------------------------------------------------------------------------- gelu mode


def test_gelu_covers_min_exactly_at_the_bottom():
    for bits in (2, 3, 4, 8):
        quantizer = TwinGeluQuantizer(bits, torch.tensor(0.1))
        bottom = torch.tensor(-GELU_MIN_ABS, dtype=torch.float32)
        x = torch.tensor([-GELU_MIN_ABS, -0.2, -5.0, -math.inf])
        assert torch.equal(quantizer(x), bottom.expand(4))
        n = 2 ** (bits - 1)
        assert -float(torch.tensor(gelu_negative_step(bits)) * n) == float(bottom)


def test_gelu_hand_computed_3bit():
    quantizer = TwinGeluQuantizer(3, torch.tensor(0.5))  # Δn = 0.16997/4 ~ 0.0425
    dn = gelu_negative_step(3)
    x = torch.tensor([-0.1, -0.02, -0.0, 0.0, 0.2, 0.3, 0.7, 1.26, 10.0])
    expected = torch.tensor([-2 * dn, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.5, 1.5], dtype=torch.float32)
    assert torch.equal(quantizer(x), expected)
    assert quantizer.codes(x).tolist() == [1, 4, 4, 4, 4, 5, 5, 7, 7]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_gelu_level_bound_random_and_adversarial(bits):
    gen = torch.Generator().manual_seed(bits)
    n = 2 ** (bits - 1)
    for scale in (1e-3, 0.02, 0.37, 5.0):
        quantizer = TwinGeluQuantizer(bits, torch.tensor(scale))
        assert quantizer.max_levels == 2**bits
        k = torch.arange(0, n + 2, dtype=torch.float64)
        dn = gelu_negative_step(bits)
        edges = torch.cat([-(k + 0.5) * dn, -k * dn, (k + 0.5) * scale, k * scale])
        special = torch.tensor([0.0, -0.0, -1e-45, 1e-45, -math.inf, math.inf, 3e38, -3e38])
        x = torch.cat([edges, edges * (1 - 1e-7), edges * (1 + 1e-7)]).to(torch.float32)
        rand = torch.randn(10_000, generator=gen) * max(scale * n, 0.2)
        assert _check_injective(quantizer, torch.cat([x, special, rand])) == 2**bits


def test_gelu_rejects_bad_scale():
    for s in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            TwinGeluQuantizer(4, torch.tensor(s))


def test_nan_raises_in_codes():
    for quantizer in (TwinSoftmaxQuantizer(4, torch.tensor(2.0)), TwinGeluQuantizer(4, torch.tensor(0.1))):
        with pytest.raises(NumericalError):
            quantizer.codes(torch.tensor([0.5, float("nan")]))
        assert math.isnan(float(quantizer(torch.tensor([float("nan")]))[0]))


# --------------------------------------------------------------------------- spec


def test_spec_modes_and_description():
    soft = make_spec("twin_uniform", bits=4)
    gelu = make_spec("twin_uniform", bits=3, mode="gelu", granularity="channel")
    assert isinstance(soft, TwinUniformSpec) and soft.mode == "softmax"
    assert soft.format_name == "TwinUniform-softmax" and gelu.name == "TwinUniform-gelu-per-channel"
    assert soft.max_levels == 16 and gelu.max_levels == 8
    assert soft.nonnegative and not gelu.nonnegative
    assert soft.refinable == () and gelu.refinable == ("scale",)
    assert spec_from_dict(gelu.to_dict()) == gelu
    with pytest.raises(ConfigError):
        make_spec("twin_uniform", bits=4, mode="relu")


def test_softmax_spec_rejects_non_probabilities():
    spec = make_spec("twin_uniform", bits=4)
    for bad in (-0.01, 1.01):
        x = torch.rand(50)
        x[7] = bad
        with pytest.raises(NumericalError, match="attn.probs"):
            spec.fit(x, where="attn.probs")
    spec.fit(torch.tensor([0.0, 0.3, 1.0 + 5e-7]))  # within the tolerance


def test_softmax_spec_init_picks_best_m():
    gen = torch.Generator().manual_seed(5)
    x = torch.softmax(torch.randn(3, 64, 64, generator=gen) * 3, dim=-1)
    spec = make_spec("twin_uniform", bits=4)
    quantizer = spec.fit(x)
    assert isinstance(quantizer, TwinSoftmaxQuantizer) and quantizer.m.shape == ()
    errors = [float(((TwinSoftmaxQuantizer(4, torch.tensor(float(m)))(x) - x) ** 2).sum()) for m in SOFTMAX_M]
    assert int(quantizer.m) == min(range(len(errors)), key=errors.__getitem__)
    assert int(quantizer.m) > 0


def test_gelu_spec_init_and_grid():
    gen = torch.Generator().manual_seed(6)
    x = torch.nn.functional.gelu(torch.randn(40, 6, generator=gen) * torch.tensor([0.5, 1, 2, 4, 8, 0.01]))
    x[:, 5] = -torch.rand(40, generator=gen) * 0.1  # no positive entry
    spec = make_spec("twin_uniform", bits=4, mode="gelu", granularity="channel")
    quantizer = spec.fit(x, axis=1)
    assert isinstance(quantizer, TwinGeluQuantizer) and quantizer.scale.shape == (6,)
    rows = x.T.contiguous()
    grid = spec.grid(rows, spec.initialize(rows, "test"))
    assert set(grid) == {"scale"} and grid["scale"].shape == (100, 6)
    top = rows.amax(dim=1)
    for r in range(5):
        assert float(grid["scale"][0, r]) == pytest.approx(0.5 * float(top[r]) / 7, rel=1e-6)
        assert float(grid["scale"][-1, r]) == pytest.approx(1.2 * float(top[r]) / 7, rel=1e-6)
        cands = grid["scale"][:, r]
        errors = torch.stack([((TwinGeluQuantizer(4, s)(rows[r]) - rows[r]) ** 2).sum() for s in cands])
        assert float(quantizer.scale[r]) == float(cands[int(errors.argmin())])
    assert (grid["scale"][:, 5] > 0).all() and math.isfinite(float(quantizer.scale[5]))
    assert torch.equal(quantizer(x)[:, 5], TwinGeluQuantizer(4, torch.tensor(1.0))(x[:, 5]))


def test_softmax_spec_per_head_and_grid():
    gen = torch.Generator().manual_seed(7)
    temperature = torch.tensor([1.0, 4.0, 9.0]).reshape(3, 1, 1)
    x = torch.softmax(torch.randn(2, 3, 16, 16, generator=gen) * temperature, dim=-1)
    spec = make_spec("twin_uniform", bits=3, granularity="head")
    quantizer = spec.fit(x, axis=1)
    assert quantizer.m.shape == (3, 1, 1) and quantizer(x).shape == x.shape
    rows = x.transpose(0, 1).reshape(3, -1)
    grid = spec.grid(rows, spec.initialize(rows, "test"))
    assert set(grid) == {"m"} and grid["m"].shape == (20, 3)
    assert torch.equal(grid["m"][:, 1], torch.arange(20.0))


@pytest.mark.parametrize("mode", ["softmax", "gelu"])
@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_search_error_matches_quantizer(mode, bits):
    """The sorted-bucket error of the data-only fit equals the quantizer's own squared error."""
    gen = torch.Generator().manual_seed(bits)
    if mode == "softmax":
        rows = torch.softmax(torch.randn(3, 500, generator=gen) * 4, dim=-1)
        params = torch.tensor(SOFTMAX_M, dtype=torch.float32).unsqueeze(1).expand(-1, 3)
        make = TwinSoftmaxQuantizer
    else:
        rows = torch.nn.functional.gelu(torch.randn(3, 500, generator=gen) * 2)
        params = torch.linspace(0.01, 1.0, 7).unsqueeze(1).expand(-1, 3)
        make = TwinGeluQuantizer
    err = twin_sq_error(rows, bits, mode, params)
    assert err.shape == params.shape
    for k in range(params.shape[0]):
        quantizer = make(bits, params[k].reshape(3, 1))
        expected = ((quantizer(rows) - rows).double() ** 2).sum(dim=1)
        assert torch.allclose(err[k], expected, rtol=1e-6, atol=1e-12), (k, err[k], expected)
