"""AdaLog: level bound, injective codes, integer table + shift form bit for bit, table vs ideal, spec."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.errors import ConfigError, NumericalError
from vitquant.quantizers.adalog import (
    ADALOG_R,
    INIT_Q,
    SEARCH_Q,
    AdaLogQuantizer,
    AdaLogSpec,
    adalog_levels,
    adalog_sq_error,
    adalog_table,
    ideal_levels,
    positive_quantile,
    table_and_shift,
    table_denominator,
)
from vitquant.quantizers.spec import make_spec, spec_from_dict

pytestmark = pytest.mark.usefixtures("single_thread")

QS = [1, 5, 10, 18, 20, 37, 60, 100, 137]


def _adversarial(bits: int, scale: float, q: int) -> torch.Tensor:
    """Zeros, denormals, huge values and inputs on and exactly between the ideal levels."""
    c = torch.arange(0, 2**bits + 2, dtype=torch.float64)
    on = scale * torch.exp2(-c * q / ADALOG_R)
    half = scale * torch.exp2(-(c + 0.5) * q / ADALOG_R)
    special = torch.tensor([0.0, -0.0, 1e-45, 1e-40, 1e-38, 1e-30, scale, 10 * scale, 3e38, math.inf])
    x = torch.cat([on, half, on * (1 + 1e-7), half * (1 - 1e-7)]).to(torch.float32)
    return torch.cat([x, special.to(torch.float32), torch.nextafter(x, torch.zeros_like(x))])


def _check_injective(quantizer: AdaLogQuantizer, x: torch.Tensor) -> int:
    out, codes = quantizer(x), quantizer.codes(x)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < quantizer.max_levels
    n_codes = torch.unique(codes).numel()
    assert torch.unique(out).numel() == n_codes <= quantizer.max_levels
    # one value per code (the pairs are no more numerous than the codes): a labelling of values
    pairs = torch.stack([codes.to(torch.float64), out.to(torch.float64)], dim=1)
    assert torch.unique(pairs, dim=0).shape[0] == n_codes
    zero = codes == quantizer.zero_code
    assert torch.equal(out[zero], torch.zeros(int(zero.sum())))
    return n_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_level_bound_random_and_adversarial(bits):
    gen = torch.Generator().manual_seed(bits)
    reached_max = False
    for scale in (1.0, 0.37, 3e-3):
        for q in QS:
            quantizer = AdaLogQuantizer(bits, torch.tensor(scale), torch.tensor(q))
            assert quantizer.max_levels == 2**bits + 1
            rand = torch.rand(20_000, generator=gen) ** 8 * 2 * scale
            x = torch.cat([rand, _adversarial(bits, scale, q)])
            n = _check_injective(quantizer, x)
            reached_max |= n == quantizer.max_levels
    assert reached_max  # the bound is attained, not just respected


def test_zero_and_tiny_inputs_map_to_zero():
    quantizer = AdaLogQuantizer(4, torch.tensor(1.0), torch.tensor(20))
    smallest = float(quantizer.levels()[0, 15])
    x = torch.tensor([0.0, -0.0, 1e-45, 1e-30, smallest * 2 ** (-20 / 37)])  # last: c = 16
    assert torch.equal(quantizer(x), torch.zeros(5))
    assert torch.equal(quantizer.codes(x), torch.full((5,), quantizer.zero_code))
    assert not torch.signbit(quantizer(x)).any()
    # just above the rounding boundary to the zero code: the smallest level
    x_low = torch.tensor([1.0 * 2 ** (-15.4 * 20 / 37)])
    assert int(quantizer.codes(x_low)) == 15 and float(quantizer(x_low)) == smallest


def test_values_above_scale_get_code_zero():
    quantizer = AdaLogQuantizer(3, torch.tensor(0.5), torch.tensor(30))
    x = torch.tensor([0.5, 0.6, 100.0, math.inf])
    assert torch.equal(quantizer.codes(x), torch.zeros(4, dtype=torch.int64))
    assert torch.equal(quantizer(x), quantizer.levels()[0, :1].expand(4))


def test_nan_and_negative_input():
    quantizer = AdaLogQuantizer(4, torch.tensor(1.0), torch.tensor(37))
    for bad in (float("nan"), -0.25):
        with pytest.raises(NumericalError):
            quantizer.codes(torch.tensor([0.5, bad]))
        with pytest.raises(NumericalError):
            quantizer.log_codes(torch.tensor([bad]))
        out = quantizer(torch.tensor([bad, 0.5]))
        assert math.isnan(float(out[0])) and float(out[1]) == 0.5


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_table_values(bits):
    d = table_denominator(bits)
    t = adalog_table(bits)
    assert t.dtype == torch.int64 and t.shape == (ADALOG_R,)
    assert int(t[0]) == d and int(t.min()) >= d // 2 and int(t.max()) <= d
    assert (t[1:] <= t[:-1]).all()
    assert torch.equal(t, torch.tensor([round(2 ** (-j / ADALOG_R) * d) for j in range(ADALOG_R)]))


def test_q37_at_4_bits_is_pure_powers_of_two():
    codes = torch.arange(16)
    t, shift = table_and_shift(codes, 37, 4)
    assert torch.equal(t, torch.full((16,), 30)) and torch.equal(shift, codes)
    levels = adalog_levels(4, torch.tensor(1.0), torch.tensor(37))
    assert torch.equal(levels, torch.cat([torch.exp2(-codes.float()), torch.zeros(1)]))
    x = torch.exp2(-torch.arange(16.0)) * 1.2  # rounds to the same power of two
    assert torch.equal(AdaLogQuantizer(4, torch.tensor(1.0), torch.tensor(37))(x), levels[:16])
    scaled = adalog_levels(4, torch.tensor(0.37), torch.tensor(37))[:16].double()
    assert torch.allclose(scaled, 0.37 * torch.exp2(-codes.double()), rtol=2e-7, atol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_table_form_within_one_over_d_of_ideal(bits):
    """|s/D · T[j] · 2^-shift - s · 2^(-c q / r)| <= s · 2^(-c q / r) / D for every code and q."""
    d = table_denominator(bits)
    q = torch.arange(1, 138).unsqueeze(1)  # the searched range; 2^(-255·137/37) is a normal float64
    codes = torch.arange(2**bits)
    t, shift = table_and_shift(codes, q, bits)
    table_form = t.double() / d * torch.exp2(-shift.double())  # exact in float64
    ideal = ideal_levels(bits, torch.tensor(1.0), q[:, 0])
    rel = ((table_form - ideal).abs() / ideal).max()
    assert 0 < float(rel) <= 1 / d
    # the float32 levels are that value rounded once more (normal range: s = 1, q <= 37 at 4 bits)
    f32 = adalog_levels(4, torch.tensor(1.0), q[:37, 0])[:, :16].double()
    exact = (adalog_table(4)[(torch.arange(16) * q[:37]) % 37].double() / 30) * torch.exp2(
        -((torch.arange(16) * q[:37]) // 37).double()
    )
    assert torch.allclose(f32, exact, rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_forward_equals_integer_table_shift_form(bits):
    """Dense sweep, one (s, q) per row: forward == s / D * ldexp(T[j], -shift) bit for bit, and the
    raw log code is round(-log2(x/s) · r / q)."""
    scales = torch.tensor([1.0, 0.37, 3e-3, 12.5, 1.0, 0.05, 0.8, 2e-4])
    qs = torch.tensor([37, 20, 10, 137, 1, 55, 18, 74])
    quantizer = AdaLogQuantizer(bits, scales.reshape(-1, 1), qs.reshape(-1, 1))
    sweep = torch.cat([torch.zeros(1), torch.logspace(-44, 1, 20_000)])
    x = (sweep.unsqueeze(0) * scales.unsqueeze(1)).to(torch.float32)
    out = quantizer(x)
    codes = quantizer.codes(x)
    raw = quantizer.log_codes(x)
    zero_code = 2**bits
    assert out.shape == x.shape and int(codes.max()) <= zero_code
    q_full = qs.reshape(-1, 1).expand_as(x)
    s_full = scales.reshape(-1, 1).expand_as(x)
    d = table_denominator(bits)
    for c in (codes, raw):
        nz = c != zero_code
        t, shift = table_and_shift(c[nz], q_full[nz], bits)
        assert t.dtype == torch.int64 and shift.dtype == torch.int64
        reference = s_full[nz] / d * torch.ldexp(t.to(torch.float32), -shift)
        assert torch.equal(out[nz], reference)
        assert torch.equal(out[~nz], torch.zeros(int((~nz).sum())))
    # raw codes against the float formula, written out plainly
    c_ref = torch.round(-torch.log2(torch.clamp(x / s_full, max=1.0)) * ADALOG_R / q_full.float())
    expected = torch.where(c_ref < zero_code, c_ref, torch.full_like(c_ref, zero_code)).to(torch.int64)
    assert torch.equal(raw, expected)
    # the level table indexed by codes is forward, per row
    levels = quantizer.levels()
    assert torch.equal(levels.gather(1, codes), out)


def test_rounded_table_merges_levels_and_codes_follow_values():
    """2 bits, q = 1: T[0..3] are all 6, so the four non-zero codes are one value."""
    quantizer = AdaLogQuantizer(2, torch.tensor(1.0), torch.tensor(1))
    x = torch.tensor([1.0, 0.99, 0.97, 0.95, 1e-3])
    assert torch.equal(quantizer.log_codes(x), torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(quantizer.codes(x), torch.tensor([0, 0, 0, 0, 4]))
    assert torch.equal(quantizer(x), torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))
    assert quantizer.levels_used(x) == 2


def test_levels_non_increasing_all_q():
    q = torch.arange(1, 300)
    for bits in (2, 5, 8):
        levels = adalog_levels(bits, torch.tensor(0.7), q)
        assert (levels[:, 1:] <= levels[:, :-1]).all()


@pytest.mark.parametrize(
    ("scale", "q"),
    [(0.0, 37), (-1.0, 37), (float("nan"), 37), (float("inf"), 37), (1.0, 0), (1.0, 2.5), (1.0, -3)],
)
def test_bad_params_rejected(scale, q):
    with pytest.raises(ConfigError):
        AdaLogQuantizer(4, torch.tensor(scale), torch.tensor(q))


def test_table_and_shift_rejects_bad_codes():
    with pytest.raises(ConfigError):
        table_and_shift(torch.tensor([16]), 37, 4)  # the zero code has no table entry
    with pytest.raises(ConfigError):
        table_and_shift(torch.tensor([1.0]), 37, 4)


def test_dtype_and_state_dict_round_trip():
    a = AdaLogQuantizer(4, torch.tensor([0.5, 1.0]).reshape(2, 1), torch.tensor([20, 37]).reshape(2, 1))
    x = torch.rand(2, 300, dtype=torch.float64)
    assert a(x).dtype == torch.float64
    b = AdaLogQuantizer(4, torch.ones(2, 1), torch.ones(2, 1))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x)) and torch.equal(a.codes(x), b.codes(x))


# --------------------------------------------------------------------------- spec


def test_spec_registered_and_described():
    spec = make_spec("adalog", bits=3)
    assert isinstance(spec, AdaLogSpec)
    assert spec.format_name == "AdaLog" and spec.max_levels == 9 and spec.nonnegative
    assert spec.refinable == ("scale",) and spec.search_name == "percentile"
    assert make_spec("adalog", bits=4, granularity="head").name == "AdaLog-per-head"
    assert spec_from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError):
        make_spec("adalog", bits=4, q=37)


def test_spec_fit_rejects_negative_input():
    x = torch.rand(100)
    x[3] = -0.01
    with pytest.raises(NumericalError):
        make_spec("adalog", bits=4).fit(x)


def test_spec_fit_per_tensor_is_best_candidate():
    x = torch.rand(4, 5_000) ** 6
    x[0, 0] = 3.0  # an outlier: the quantile candidates beat the max
    spec = make_spec("adalog", bits=4)
    quantizer = spec.fit(x)
    assert isinstance(quantizer, AdaLogQuantizer) and quantizer.scale.shape == ()
    assert int(quantizer.q) in INIT_Q
    err = float(((quantizer(x) - x) ** 2).sum())
    for s in (float(x.max()), float(torch.quantile(x, 0.999))):
        for q in INIT_Q:
            other = AdaLogQuantizer(4, torch.tensor(s), torch.tensor(q))
            assert err <= float(((other(x) - x) ** 2).sum()) * (1 + 1e-6)


def test_spec_fit_per_channel_shapes():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, 50, 5, generator=gen) ** 4 * torch.arange(1.0, 6.0)  # channels last
    x[..., 2] = 0.0  # an all-zero channel
    quantizer = make_spec("adalog", bits=4, granularity="channel").fit(x, axis=-1)
    assert quantizer.scale.shape == (5,) and quantizer.q.shape == (5,)
    assert float(quantizer.scale[2]) == 1.0 and float(quantizer.q[2]) == 37.0
    assert torch.equal(quantizer(x)[..., 2], torch.zeros_like(x[..., 2]))
    head = make_spec("adalog", bits=3, granularity="head").fit(x, axis=1)
    assert head.scale.shape == (6, 1, 1) and head.q.shape == (6, 1, 1)
    assert head(x).shape == x.shape


def test_spec_grid():
    gen = torch.Generator().manual_seed(2)
    rows = torch.rand(3, 1_000, generator=gen)
    rows[1] = 0.0
    rows[2, :900] = 0.0  # 100 positive entries
    spec = make_spec("adalog", bits=4, granularity="channel")
    grid = spec.grid(rows, spec.initialize(rows, "test"))
    assert set(grid) == {"scale", "q"}
    assert grid["q"].shape == (128, 3)
    assert torch.equal(grid["q"][:, 0], torch.tensor(SEARCH_Q, dtype=torch.float32))
    scale = grid["scale"]
    assert scale.shape == (32, 3)
    assert torch.equal(scale[:, 1], torch.ones(32))  # degenerate row
    for r in (0, 2):
        pos = rows[r][rows[r] > 0]
        assert float(scale[0, r]) == pytest.approx(float(torch.quantile(pos, 0.9)), rel=1e-6)
        assert float(scale[-1, r]) == pytest.approx(float(pos.max()), rel=1e-6)
    quantizer = spec.build(spec.from_grid({"scale": scale[5], "q": grid["q"][7]}), (3, 1))
    assert torch.equal(quantizer.q[:, 0], torch.full((3,), 17.0))


def test_positive_quantile_matches_torch():
    gen = torch.Generator().manual_seed(3)
    rows = torch.rand(5, 777, generator=gen) - 0.4
    rows[4] = -1.0
    got = positive_quantile(rows, 0.9)
    for r in range(4):
        assert float(got[r]) == pytest.approx(float(torch.quantile(rows[r][rows[r] > 0], 0.9)), rel=1e-6)
    assert float(got[4]) == 0.0


def test_search_error_matches_quantizer():
    gen = torch.Generator().manual_seed(4)
    rows = torch.rand(3, 2_000, generator=gen) ** 5
    scales = torch.tensor([[1.0, 0.5, 0.9], [0.2, 0.3, 0.4]])
    qs = torch.tensor([10.0, 37.0, 101.0])
    err = adalog_sq_error(rows, scales, qs, 4)
    for i in range(2):
        for j, q in enumerate(qs.tolist()):
            quantizer = AdaLogQuantizer(4, scales[i].reshape(3, 1), torch.full((3, 1), q))
            expected = ((quantizer(rows) - rows).double() ** 2).sum(dim=1)
            assert torch.allclose(err[i, j], expected, rtol=1e-5)


def test_levels_below_float32_range_take_the_zero_code():
    """A level that underflows (s/D · ldexp(T, -shift) below 2^-150) is 0: it gets the zero code, so codes
    still label values; subnormal levels stay distinct codes only where their values differ."""
    # x = 2^-149 rounds up to code 14, whose level s·2^(-14·137/37) ~ 2^-150.8 is below float32's range
    scale = 2.0 ** (-149 + 13.51 * 137 / 37)
    quantizer = AdaLogQuantizer(8, torch.tensor(scale), torch.tensor(137))
    x = torch.tensor([2.0**-149, 1e-40, 1e-36, 1e-30, 1.0, 3e38])
    raw = quantizer.log_codes(x)
    assert int(raw[0]) < 256 and float(quantizer(x)[0]) == 0.0
    assert int(quantizer.codes(x)[0]) == quantizer.zero_code
    _check_injective(quantizer, torch.cat([x, torch.logspace(-45, 38, 5_000)]))
    subnormal = AdaLogQuantizer(8, torch.tensor(1.0), torch.tensor(11))
    _check_injective(subnormal, torch.logspace(-45, -36, 5_000))
