"""BitLog2: scheme arithmetic, the integer and float32 dequantizers against a plain-Python reference and
the published golden vectors (``shared/testvectors/BitLog2_*.csv``), and the fake-quant module."""

from __future__ import annotations

import csv

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.paths import shared_dir
from vitquant.quantizers.bitlog2 import (
    BitLog2Quantizer,
    BitLog2Scheme,
    code_float,
    code_int,
    dequant_float,
    dequant_int,
    integer_log2,
    parse_bitlog2,
    to_int_domain,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEMES = [(False, 16), (False, 17), (True, 16), (True, 17)]
SCHEME_IDS = ["Single_16", "Single_17", "Half_16", "Half_17"]
# int_max and the number of distinct values at 4 bit, from the scheme table.
EXPECTED_4BIT = {"Single_16": (32768, 16), "Single_17": (65536, 17), "Half_16": (256, 16), "Half_17": (384, 17)}
EXHAUSTIVE_LIMIT = 2**20


# --------------------------------------------------------------------------- plain-Python reference
def ref_dequant(x: int, half: bool) -> int:
    """D(x): 2^k with k the leading-one position; Half adds 2^(k-1) when bit k-1 is set. D(0) = 0."""
    if x == 0:
        return 0
    k = x.bit_length() - 1
    value = 1 << k
    if half and k >= 1 and (x >> (k - 1)) & 1:
        value += 1 << (k - 1)
    return value


def ref_levels(int_max: int, half: bool) -> list[int]:
    """Every value of D over 0..int_max-1 without enumerating them: on [2^k, 2^(k+1)) D is 2^k, or
    1.5*2^k (Half) from x = 3*2^(k-1) on, so those two x per binade reach every value."""
    vals = {0}
    k = 0
    while (1 << k) < int_max:
        vals.add(ref_dequant(1 << k, half))
        if k >= 1 and 3 << (k - 1) < int_max:
            vals.add(ref_dequant(3 << (k - 1), half))
        k += 1
    return sorted(vals)


def _golden(name: str) -> tuple[list[int], list[int]]:
    root = shared_dir()
    if root is None:
        pytest.skip("no shared folder: golden BitLog2 vectors unavailable")
    path = root / "testvectors" / f"BitLog2_{name}.csv"
    if not path.is_file():
        pytest.skip(f"golden file {path} missing")
    xs, ds = [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["x_int", "dequantized_int"]
        for row in reader:
            xs.append(int(row["x_int"]))
            ds.append(int(row["dequantized_int"]))
    return xs, ds


def _valid_bits(half: bool) -> list[int]:
    return [2, 3, 4, 5, 6] if half else [2, 3, 4, 5]


# --------------------------------------------------------------------------- scheme arithmetic
@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_scheme_4bit_matches_golden_levels(half, variant):
    scheme = BitLog2Scheme(half=half, variant=variant, bits=4)
    name = scheme.name.removeprefix("BitLog2_")
    int_max, n_levels = EXPECTED_4BIT[name]
    assert scheme.int_max == int_max
    assert scheme.max_levels == n_levels == variant
    xs, ds = _golden(name)
    assert xs == list(range(int_max))  # golden covers every x_int exactly once, in order
    assert scheme.levels() == sorted(set(ds))
    assert len(set(ds)) == n_levels


@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_max_levels_every_bit_width(half, variant):
    for bits in _valid_bits(half):
        scheme = BitLog2Scheme(half=half, variant=variant, bits=bits)
        expected = 2**bits if variant == 16 else 2**bits + 1
        assert scheme.max_levels == expected, (bits, scheme.levels())
        assert scheme.levels() == ref_levels(scheme.int_max, half)
        assert scheme.levels() == sorted(set(scheme.levels()))  # ascending, no duplicates


def test_int_max_formulas():
    for bits in (2, 3, 4, 5):
        assert BitLog2Scheme(False, 16, bits).int_max == 2 ** (2**bits - 1)
        assert BitLog2Scheme(False, 17, bits).int_max == 2 ** (2**bits)
    for bits in (2, 3, 4, 5, 6):
        m = 2 ** (bits - 1) - 1
        assert BitLog2Scheme(True, 16, bits).int_max == 2 ** (m + 1)
        assert BitLog2Scheme(True, 17, bits).int_max == 3 * 2**m


# --------------------------------------------------------------------------- exhaustive at 4 bit
@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_exhaustive_4bit_int_float_python_golden(half, variant):
    scheme = BitLog2Scheme(half=half, variant=variant, bits=4)
    x_int = torch.arange(scheme.int_max, dtype=torch.int64)

    d_int = dequant_int(x_int, half)
    assert d_int.dtype == torch.int64
    python_ref = [ref_dequant(v, half) for v in range(scheme.int_max)]
    assert d_int.tolist() == python_ref

    x_f = x_int.to(torch.float32)  # exact: int_max <= 2^16
    d_float = dequant_float(x_f, half)
    assert d_float.dtype == torch.float32
    assert torch.equal(d_float.to(torch.int64), d_int)

    c_int = code_int(x_int, half)
    c_float = code_float(x_f, half)
    assert c_float.dtype == torch.int64
    assert torch.equal(c_int, c_float)
    assert int(c_int.min()) == 0 and int(c_int.max()) == scheme.max_levels - 1
    table = torch.tensor(scheme.levels(), dtype=torch.int64)
    assert torch.equal(table[c_int], d_int)

    _, golden = _golden(scheme.name.removeprefix("BitLog2_"))  # last: the checks above need no files
    assert python_ref == golden
    assert d_int.tolist() == golden


# --------------------------------------------------------------------------- other bit widths
def _edge_integers(int_max: int) -> list[int]:
    vals = {0, 1, 2, int_max - 1}
    k = 0
    while (1 << k) < int_max:
        for v in ((1 << k) - 1, 1 << k, (1 << k) + 1, (3 << k) >> 1, ((3 << k) >> 1) - 1):
            if 0 <= v < int_max:
                vals.add(v)
        k += 1
    return sorted(vals)


OTHER_BITS = [(h, v, b) for h, v in SCHEMES for b in ((2, 3, 5, 6) if h else (2, 3, 5))]


@pytest.mark.parametrize(
    ("half", "variant", "bits"),
    OTHER_BITS,
    ids=[f"{'Half' if h else 'Single'}_{v}-{b}bit" for h, v, b in OTHER_BITS],
)
def test_int_path_matches_python_reference_other_bits(half, variant, bits):
    scheme = BitLog2Scheme(half=half, variant=variant, bits=bits)
    int_max = scheme.int_max
    if int_max <= EXHAUSTIVE_LIMIT:
        xs = list(range(int_max))
    else:
        gen = torch.Generator().manual_seed(1000 * bits + variant + (7 if half else 0))
        sample = torch.randint(0, int_max, (200_000,), dtype=torch.int64, generator=gen).tolist()
        xs = sorted(set(sample) | set(_edge_integers(int_max)))
        assert max(xs) == int_max - 1
    x_int = torch.tensor(xs, dtype=torch.int64)
    d_int = dequant_int(x_int, half)
    expected = [ref_dequant(v, half) for v in xs]
    assert d_int.tolist() == expected

    levels = scheme.levels()
    index = {v: i for i, v in enumerate(levels)}
    c_int = code_int(x_int, half)
    assert c_int.tolist() == [index[v] for v in expected]
    if int_max <= EXHAUSTIVE_LIMIT:
        assert sorted(set(expected)) == levels  # every level is reached

    # Float path on the float32 integers the simulation can actually hold (those are what
    # to_int_domain produces); for int_max <= 2^24 that is every x_int.
    top = torch.nextafter(torch.tensor(float(int_max)), torch.tensor(0.0))
    x_f = x_int.to(torch.float32).clamp_(max=float(top))
    back = x_f.to(torch.int64)
    if int_max <= 2**24:
        assert torch.equal(back, x_int)
    assert torch.equal(dequant_float(x_f, half).to(torch.int64), dequant_int(back, half))
    assert torch.equal(code_float(x_f, half), code_int(back, half))


def test_integer_log2_matches_bit_length():
    gen = torch.Generator().manual_seed(5)
    vals = [1, 2, 3] + [(1 << k) + d for k in range(62) for d in (-1, 0, 1) if (1 << k) + d > 0]
    vals += torch.randint(1, 2**62, (5000,), dtype=torch.int64, generator=gen).tolist()
    x = torch.tensor(vals, dtype=torch.int64)
    assert integer_log2(x).tolist() == [v.bit_length() - 1 for v in vals]
    assert integer_log2(torch.zeros(3, dtype=torch.int64)).tolist() == [0, 0, 0]


def test_integer_log2_rejects_float():
    with pytest.raises(TypeError):
        integer_log2(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError):
        integer_log2(torch.tensor([1, 2], dtype=torch.int32))


def test_float_path_rejects_non_float32():
    with pytest.raises(TypeError):
        dequant_float(torch.tensor([1.0], dtype=torch.float64), half=True)
    with pytest.raises(TypeError):
        code_float(torch.tensor([1], dtype=torch.int64), half=False)


# --------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(("half", "bits"), [(False, 6), (False, 7), (True, 7), (True, 8)])
@pytest.mark.parametrize("variant", [16, 17])
def test_too_many_bits_for_int64(half, bits, variant):
    with pytest.raises(ConfigError, match="--attn-bits"):
        BitLog2Scheme(half=half, variant=variant, bits=bits)


@pytest.mark.parametrize("bits", [1, 9, 0, -4])
@pytest.mark.parametrize("half", [False, True])
def test_bits_out_of_range(half, bits):
    with pytest.raises(ConfigError):
        BitLog2Scheme(half=half, variant=17, bits=bits)


@pytest.mark.parametrize("variant", [15, 18, 0, "17", None])
def test_bad_variant(variant):
    with pytest.raises(ConfigError):
        BitLog2Scheme(half=True, variant=variant, bits=4)


def test_parse_bitlog2():
    for text in ("BitLog2_Half_17", "bitlog2-half-17", " BITLOG2-HALF_17 "):
        scheme = parse_bitlog2(text)
        assert scheme == BitLog2Scheme(half=True, variant=17, bits=4)
        assert scheme.name == "BitLog2_Half_17"
    assert parse_bitlog2("bitlog2_single_16", bits=3) == BitLog2Scheme(half=False, variant=16, bits=3)
    for bad in ("bitlog2-third-17", "bitlog2-half-18", "sqrt2-17", "bitlog2-half", "xbitlog2-half-17"):
        with pytest.raises(ConfigError):
            parse_bitlog2(bad)
    with pytest.raises(ConfigError):
        parse_bitlog2("bitlog2-single-17", bits=6)


# --------------------------------------------------------------------------- to_int_domain
@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_to_int_domain_one_maps_to_top_level(half, variant):
    for bits in _valid_bits(half):
        scheme = BitLog2Scheme(half=half, variant=variant, bits=bits)
        v = to_int_domain(torch.tensor([1.0, 0.0, -0.5, 2.0]), scheme)
        assert v.dtype == torch.float32
        top_level = ref_dequant(scheme.int_max - 1, half)
        assert top_level == scheme.levels()[-1]
        assert dequant_float(v, half)[[0, 3]].tolist() == [top_level, top_level]
        assert v[1].item() == 0.0 and v[2].item() == 0.0
        q = BitLog2Quantizer(scheme, 1)
        if scheme.int_max <= 2**24:
            assert q.to_int(torch.tensor([1.0])).item() == scheme.int_max - 1
        assert int(q.to_int(torch.tensor([1.0])).item()) < scheme.int_max


def test_single17_5bit_one_is_2_pow_31():
    scheme = BitLog2Scheme(half=False, variant=17, bits=5)
    assert scheme.int_max == 2**32
    assert scheme.max_levels == 33
    v = to_int_domain(torch.tensor([1.0]), scheme)
    assert dequant_float(v, half=False).item() == 2.0**31
    assert dequant_int(v.to(torch.int64), half=False).item() == 2**31
    assert BitLog2Quantizer(scheme, 2**31)(torch.tensor([1.0])).item() == 1.0


# --------------------------------------------------------------------------- the quantizer module
def _reference_forward(x: torch.Tensor, scheme: BitLog2Scheme, divisor: int) -> torch.Tensor:
    x_int = torch.floor(x.to(torch.float32) * float(scheme.int_max)).clamp(0, scheme.int_max - 1)
    d = [ref_dequant(int(v), scheme.half) for v in x_int.to(torch.int64).reshape(-1).tolist()]
    return (torch.tensor(d, dtype=torch.float32) / float(divisor)).reshape(x.shape)


@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_forward_matches_reference(half, variant):
    scheme = BitLog2Scheme(half=half, variant=variant, bits=4)
    gen = torch.Generator().manual_seed(11)
    x = torch.cat(
        [
            torch.rand(20000, generator=gen),
            torch.rand(5000, generator=gen) ** 8,
            torch.tensor([0.0, 1.0, 0.5, 1.0 / scheme.int_max, 2.0 / scheme.int_max, 1.0 - 2**-24]),
        ]
    )
    for divisor in (1, 3, scheme.levels()[-1], scheme.int_max - 1):
        q = BitLog2Quantizer(scheme, divisor)
        out = q(x)
        assert out.dtype == x.dtype and out.shape == x.shape
        assert torch.equal(out, _reference_forward(x, scheme, divisor))
    # dtype is preserved for half-precision inputs too
    assert q(x.to(torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_distinct_outputs_bounded_on_softmax(half, variant):
    scheme = BitLog2Scheme(half=half, variant=variant, bits=4)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 197, 197, generator=gen) * 4.0
    x = torch.softmax(logits, dim=-1)
    x[0, 0, :5] = 0.0
    x[0, 1, 0] = 1.0
    q = BitLog2Quantizer(scheme, 37)
    distinct = torch.unique(q(x)).numel()
    used = q.levels_used(x)
    assert distinct <= scheme.max_levels
    assert used <= scheme.max_levels
    assert used == distinct  # codes are an injective labelling of the output values
    codes = q.codes(x)
    assert int(codes.min()) >= 0 and int(codes.max()) < scheme.max_levels
    # all levels are used on a sweep over [0, 1]
    sweep = torch.linspace(0, 1, 200_001)
    assert q.levels_used(sweep) == scheme.max_levels == torch.unique(q(sweep)).numel()


@pytest.mark.parametrize("divisor", [0, -1, 0.5])
def test_divisor_below_one_rejected(divisor):
    with pytest.raises(ConfigError):
        BitLog2Quantizer(BitLog2Scheme(half=True, variant=17), divisor)


@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_nan_input_not_silently_finite(half, variant):
    q = BitLog2Quantizer(BitLog2Scheme(half=half, variant=variant), 5)
    nan = torch.tensor(float("nan"))
    x = torch.stack([nan, -nan, torch.tensor(0.25)])
    out = q(x)
    assert not torch.isfinite(out[0]) and not torch.isfinite(out[1])
    assert torch.isfinite(out[2])


@pytest.mark.parametrize(("half", "variant"), SCHEMES, ids=SCHEME_IDS)
def test_nan_codes_raise_or_stay_in_range(half, variant):
    scheme = BitLog2Scheme(half=half, variant=variant)
    q = BitLog2Quantizer(scheme, 9)
    x = torch.cat([torch.linspace(0, 1, 200_001), torch.tensor([float("nan")])])
    try:
        codes = q.codes(x)
        used = q.levels_used(x)
    except ValueError:
        return  # refusing NaN is fine
    assert int(codes.max()) < scheme.max_levels
    assert used <= scheme.max_levels
