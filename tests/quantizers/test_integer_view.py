"""Integer form of every quantizer: ``to_integer(x).dequantize()`` equals ``forward(x)`` bit for bit, and each
format's mantissa and shift are the hardware form its module documents."""

from __future__ import annotations

import math

import pytest
import torch
from quantizer_cases import CASE_IDS, CASES, probabilities

from vitquant.errors import ConfigError, NotIntegerError, NumericalError
from vitquant.quantizers import (
    AdaLogQuantizer,
    BitLog2Quantizer,
    BitLog2Scheme,
    IntegerView,
    LogSqrt2Quantizer,
    Quantizer,
    TwinGeluQuantizer,
    TwinSoftmaxQuantizer,
    UniformQuantizer,
)
from vitquant.quantizers.adalog import table_and_shift, table_denominator
from vitquant.quantizers.bitlog2 import dequant_int
from vitquant.quantizers.integer_view import dyadic

pytestmark = pytest.mark.usefixtures("single_thread")

INTEGER_CASES = [case for case in CASES if case[1].integer_form]
INTEGER_IDS = [name for name, q, _ in CASES if q.integer_form]
SQRT2_F32 = 11863283  # float32's √2 = 11863283 · 2^-23


# --------------------------------------------------------------------------- the view itself


def test_dequantize_formula_with_and_without_shift():
    scale = torch.tensor([0.5, 3.0], dtype=torch.float64)
    view = IntegerView(torch.tensor([[3, -2], [1, 0]]), torch.tensor([[1, 0], [200, 7]]), scale)
    expected = torch.tensor([[0.75, -6.0], [0.5 * 2.0**-200, 0.0]], dtype=torch.float64)
    assert torch.equal(view.dequantize(), expected)  # 2^-200: exact in float64, not a float32 power
    flat = IntegerView(torch.tensor([-3, 5]), None, torch.tensor(0.25, dtype=torch.float64))
    assert torch.equal(flat.dequantize(), torch.tensor([-0.75, 1.25], dtype=torch.float64))


@pytest.mark.parametrize(
    ("mantissa", "shift", "scale", "message"),
    [
        (torch.tensor([1.0]), None, torch.tensor(1.0, dtype=torch.float64), "mantissa must be int64"),
        (torch.tensor([1]), torch.tensor([1], dtype=torch.int32), torch.tensor(1.0, dtype=torch.float64), "shift"),
        (torch.tensor([1, 2]), torch.tensor([1]), torch.tensor(1.0, dtype=torch.float64), "shaped like"),
        (torch.tensor([1]), None, torch.tensor(1.0), "scale must be float64"),
    ],
)
def test_view_rejects_bad_fields(mantissa, shift, scale, message):
    with pytest.raises(ConfigError, match=message):
        IntegerView(mantissa, shift, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dyadic_is_exact_with_odd_mantissa(dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5_000, generator=gen, dtype=torch.float64) * torch.exp2(torch.randint(-60, 60, (5_000,)))
    tiny = torch.finfo(dtype).tiny
    special = [0.0, 1.0, -1.0, 0.75, 2.0**-30, 3 * 2.0**40, tiny, tiny / 8, torch.finfo(dtype).max]
    w = torch.cat([w, torch.tensor(special, dtype=torch.float64)]).to(dtype)
    m, e = dyadic(w)
    assert m.dtype == e.dtype == torch.int64
    assert torch.equal(torch.ldexp(m.double(), -e), w.double())
    nonzero = m != 0
    assert torch.equal(m[nonzero] % 2, torch.ones_like(m[nonzero]))  # odd: the canonical form
    assert torch.equal(e[~nonzero], torch.zeros_like(e[~nonzero]))
    assert dyadic(torch.tensor([0.75, 40.0]))[0].tolist() == [3, 5]
    assert dyadic(torch.tensor([0.75, 40.0]))[1].tolist() == [2, -3]


# --------------------------------------------------------------------------- bit-exact on every class


@pytest.mark.parametrize(("name", "quantizer", "x"), INTEGER_CASES, ids=INTEGER_IDS)
def test_dequantize_equals_forward_bit_for_bit(name, quantizer, x):
    view = quantizer.to_integer(x)
    out = quantizer(x)
    assert view.mantissa.shape == x.shape and view.mantissa.dtype == torch.int64
    assert view.shift is None or (view.shift.shape == x.shape and int(view.shift.min()) >= 0)
    assert view.scale.dtype == torch.float64
    assert torch.broadcast_shapes(view.scale.shape, x.shape) == x.shape
    got = view.dequantize().to(x.dtype)
    # bit patterns, not ==: only the sign of zero may differ (uniform and BitLog2 forward give -0.0 for
    # small negative inputs; an integer 0 has no sign), so compare with forward's zeros made +0.0
    same = got.view(torch.int32) == out.add(0.0).view(torch.int32)
    assert same.all(), f"{name}: {int((~same).sum())} elements differ"


@pytest.mark.parametrize(("name", "quantizer", "x"), CASES, ids=CASE_IDS)
def test_integer_form_flag_matches_behaviour(name, quantizer, x):
    if quantizer.integer_form:
        quantizer.to_integer(x[:10])
    else:
        with pytest.raises(NotIntegerError):
            quantizer.to_integer(x[:10])


def test_every_quantizer_class_is_covered():
    classes = {type(q) for _, q, _ in CASES}
    assert classes == {c for c in _subclasses(Quantizer) if not c.__abstractmethods__}
    assert {c.__name__ for c in classes if not c.integer_form} == {"TwinGeluQuantizer"}


def _subclasses(cls: type) -> set[type]:
    return {s for c in cls.__subclasses__() for s in {c} | _subclasses(c)}


@pytest.mark.parametrize(("name", "quantizer", "x"), INTEGER_CASES, ids=INTEGER_IDS)
def test_nan_input_is_an_error(name, quantizer, x):
    bad = x[:10].clone()
    bad.view(-1)[3] = math.nan
    with pytest.raises(NumericalError, match="NaN"):
        quantizer.to_integer(bad)


def test_twin_gelu_names_the_format_and_the_reason():
    with pytest.raises(NotIntegerError, match=r"twin-uniform gelu.*power-of-two ratio.*integer-only"):
        TwinGeluQuantizer(4, torch.tensor(0.2)).to_integer(torch.zeros(3))
    assert issubclass(NotIntegerError, ConfigError)


# --------------------------------------------------------------------------- the form of each format


def test_uniform_mantissa_is_code_minus_zero_point():
    q = UniformQuantizer(8, torch.tensor([[0.02], [0.5]]), torch.tensor([[-4.0], [300.0]]))
    x = torch.linspace(-200, 200, 4_001).expand(2, -1)
    view = q.to_integer(x)
    assert view.shift is None
    assert torch.equal(view.mantissa, q.codes(x) - q.zero_point.to(torch.int64))
    assert torch.equal(view.scale, q.scale.double())
    assert int(view.mantissa.min()) == -300 and int(view.mantissa.max()) == 259


def test_uniform_float64_input_matches_float64_forward():
    q = UniformQuantizer(4, torch.tensor(1 / 3), torch.tensor(5.0))
    x = torch.linspace(-3, 3, 10_001, dtype=torch.float64)
    assert torch.equal(q.to_integer(x).dequantize(), q(x))


def test_ptf_quantizer_has_the_uniform_form():
    from vitquant.quantizers import PTFSpec

    x = torch.randn(64, 6) * torch.tensor([0.1, 1, 4, 8, 30, 60])
    q = PTFSpec(bits=6).fit(x, axis=-1)
    assert isinstance(q, UniformQuantizer)
    assert torch.equal(q.to_integer(x).dequantize().float(), q(x))


@pytest.mark.parametrize(("half", "variant", "bits"), [(False, 16, 2), (False, 17, 3), (True, 16, 4), (True, 17, 5)])
def test_bitlog2_mantissa_and_shift_rebuild_the_integer_level(half, variant, bits):
    scheme = BitLog2Scheme(half, variant, bits)
    q = BitLog2Quantizer(scheme, 7)
    x = torch.arange(scheme.int_max, dtype=torch.float64).div(scheme.int_max).to(torch.float32)
    x_int = q.to_int(x)
    view = q.to_integer(x)
    k_top = (scheme.int_max - 1).bit_length() - 1
    assert set(view.mantissa.unique().tolist()) <= ({0, 1, 3} if half else {0, 1})
    # μ · 2^(k_top - shift) is the integer level D(x_int): only shifts, no multiplier beyond 3
    assert torch.equal(view.mantissa << (k_top - view.shift), dequant_int(x_int, half))
    assert torch.equal(view.scale, torch.tensor(2.0**k_top / 7, dtype=torch.float64))
    assert torch.equal(view.dequantize().float(), q(x))


def test_bitlog2_exact_for_every_divisor_and_level_at_4bit():
    """Every level of every scheme against every divisor 1..3000 and some with odd parts near 2^24."""
    divisors = torch.cat([torch.arange(1, 3001.0), torch.tensor([2**24 - 1, 2**24 - 3, 16777213.0 * 64])])
    for half, variant in [(False, 16), (False, 17), (True, 16), (True, 17)]:
        scheme = BitLog2Scheme(half, variant, 4)
        levels = torch.tensor(scheme.levels(), dtype=torch.float64)
        x = (levels / scheme.int_max).to(torch.float32).expand(len(divisors), -1)  # reaches every level
        q = BitLog2Quantizer(scheme, divisors.unsqueeze(1).clamp(max=scheme.int_max - 1))
        assert torch.equal(q.to_integer(x).dequantize().float(), q(x.clone()))


def test_log_sqrt2_mantissa_is_one_or_float32_sqrt2():
    q = LogSqrt2Quantizer(4, 17, torch.tensor(0.7))
    x = 0.7 * torch.exp2(-torch.arange(0, 17, dtype=torch.float32) / 2)  # on every level
    view = q.to_integer(x)
    codes = q.codes(x)
    assert torch.equal(view.mantissa, torch.where(codes % 2 == 1, SQRT2_F32, 1).masked_fill(codes == 16, 0))
    ceil_half = (codes + 1) // 2
    expected_shift = torch.where(codes % 2 == 1, ceil_half + 23, ceil_half).masked_fill(codes == 16, 0)
    assert torch.equal(view.shift, expected_shift)
    assert float(torch.tensor(math.sqrt(2), dtype=torch.float32)) == SQRT2_F32 * 2.0**-23


def test_log_sqrt2_subnormal_unit_levels_at_8bit_stay_exact():
    q = LogSqrt2Quantizer(8, 17, torch.tensor(3e30))
    x = 3e30 * torch.exp2(-torch.arange(0, 256, dtype=torch.float64) / 2).to(torch.float32)
    view = q.to_integer(x)
    deep = view.shift > 149 - 24  # 2^(-q/2) was subnormal: float32 kept fewer than 24 bits of √2
    assert deep.any() and not torch.isin(view.mantissa[deep], torch.tensor([1, SQRT2_F32])).all()
    assert torch.equal(view.dequantize().float(), q(x))


def test_adalog_mantissa_is_the_table_entry():
    q = AdaLogQuantizer(4, torch.tensor([[0.5], [2.0]]), torch.tensor([[37.0], [100.0]]))
    x = probabilities().expand(2, -1) * torch.tensor([[0.5], [2.0]])
    view = q.to_integer(x)
    c = q.log_codes(x)
    nonzero = c < q.zero_code
    table, shift = table_and_shift(c.clamp(max=q.zero_code - 1), q.q, q.bits)
    assert torch.equal(view.mantissa, torch.where(nonzero, table, 0))
    assert torch.equal(view.shift, torch.where(nonzero, shift, 0))
    assert torch.equal(view.scale, (q.scale / table_denominator(4)).double())


def test_adalog_deep_shifts_take_float32s_rounding():
    """s = 1e30, q = 1000 at 8 bits: x/s near 2^-149 gives codes with shift > 149, where the level table's
    float32 T·2^-shift has lost bits (or is 0) while s/D·T·2^-shift is a normal float32 number."""
    q = AdaLogQuantizer(8, torch.tensor(1e30), torch.tensor(1000.0))
    x = 1e30 * torch.ldexp(torch.ones(60), -torch.arange(100, 160))  # x/s = 2^-100 .. 2^-149 (and below)
    view = q.to_integer(x)
    c = q.log_codes(x)
    nonzero = c < q.zero_code
    table, shift = table_and_shift(torch.where(nonzero, c, 0), 1000, 8)
    naive = torch.where(nonzero, torch.ldexp(table.double(), -shift) * view.scale, 0.0).float()
    assert not torch.equal(naive, q(x))  # T and shift alone would be wrong here
    assert not torch.equal(view.mantissa, torch.where(nonzero, table, 0))
    assert torch.equal(view.dequantize().float(), q(x))


def test_twin_softmax_ranges_and_shifts():
    q = TwinSoftmaxQuantizer(3, torch.tensor(1.0))  # Δ1 = 1/8, Δ2 = 1/4, R1 below 0.4375
    x = torch.tensor([0.06, 0.07, 0.3, 0.43, 0.44, 0.6, 0.99, -0.2])
    view = q.to_integer(x)
    assert view.mantissa.tolist() == [0, 1, 2, 3, 2, 2, 4, 0]
    assert view.shift.tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert view.scale.item() == 0.25
    assert view.dequantize().tolist() == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 1.0, 0.0]
