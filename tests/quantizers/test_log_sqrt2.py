"""log√2 quantizer: published golden outputs (``shared/testvectors/Sqrt2.csv``), level counts, codes."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.paths import shared_dir
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer, log_sqrt2_levels

pytestmark = pytest.mark.usefixtures("single_thread")

REL_TOL = 1e-6  # float32 arithmetic in the published code


def _golden_rows() -> list[dict[str, str]]:
    root = shared_dir()
    if root is None:
        pytest.skip("no shared folder: golden Sqrt2 vectors unavailable")
    path = root / "testvectors" / "Sqrt2.csv"
    if not path.is_file():
        pytest.skip(f"golden file {path} missing")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["x", "delta", "Sqrt2_16", "Sqrt2_17"]
        return list(reader)


@pytest.mark.parametrize("variant", [16, 17])
def test_golden_sqrt2_4bit(variant):
    rows = _golden_rows()
    assert len(rows) > 1000
    deltas = sorted({row["delta"] for row in rows})
    assert len(deltas) >= 2
    checked = 0
    n_zero = 0
    for delta_text in deltas:
        sub = [row for row in rows if row["delta"] == delta_text]
        x = torch.tensor([float(row["x"]) for row in sub], dtype=torch.float32)
        golden = torch.tensor([float(row[f"Sqrt2_{variant}"]) for row in sub], dtype=torch.float64)
        q = LogSqrt2Quantizer(4, variant, torch.tensor(float(delta_text)))
        out = q(x).to(torch.float64)
        zero = golden == 0
        # zeros must be exact, both ways
        assert torch.equal(out == 0, zero), f"delta={delta_text}: zero pattern differs"
        rel = (out[~zero] - golden[~zero]).abs() / golden[~zero].abs()
        assert float(rel.max()) <= REL_TOL, f"delta={delta_text}: max relative error {float(rel.max())}"
        checked += len(sub)
        n_zero += int(zero.sum())
    assert checked == len(rows)
    assert 0 < n_zero < checked  # the file exercises both zero and non-zero outputs


@pytest.mark.parametrize(("bits", "variant", "expected"), [(4, 17, 17), (4, 16, 16), (3, 17, 9), (3, 16, 8)])
@pytest.mark.parametrize("delta", [1.0, 0.37])
def test_distinct_outputs_dense_sweep(bits, variant, expected, delta):
    q = LogSqrt2Quantizer(bits, variant, torch.tensor(delta))
    assert q.max_levels == expected
    x = torch.linspace(0.0, 2.0 * delta, 400_001)
    out = q(x)
    distinct = torch.unique(out)
    assert distinct.numel() == expected
    assert q.levels_used(x) == expected
    assert float(out.max()) == pytest.approx(delta, rel=1e-7)
    assert float(distinct[0]) == 0.0
    # beyond the sweep: tiny, huge and exact-zero inputs never add a level
    extra = torch.tensor([0.0, 1e-30, 1e-6 * delta, 10.0 * delta, 1e30])
    assert torch.unique(torch.cat([out, q(extra)])).numel() == expected


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("variant", [16, 17])
def test_every_code_all_bits(bits, variant):
    """Inputs placed on and between every level: forward equals the level table of the code, the
    table has max_levels distinct values, and every code is reached."""
    delta = torch.tensor(0.61)
    q = LogSqrt2Quantizer(bits, variant, delta)
    expected_levels = 2**bits + (1 if variant == 17 else 0)
    assert q.max_levels == expected_levels
    table = log_sqrt2_levels(bits, variant, delta)
    assert table.numel() == expected_levels
    assert torch.unique(table).numel() == expected_levels
    assert float(table[-1]) == 0.0 and float(table[0]) == float(delta)

    k = torch.arange(0, 2**bits + 3, dtype=torch.float64)
    on = 0.61 * 2 ** (-k / 2)  # c == k
    between = 0.61 * 2 ** (-(k + 0.3) / 2)  # c == k (round down) or k+1 (0.3 rounds to k)
    x = torch.cat([on, between, torch.tensor([0.0, 2.0, 1e-30])]).to(torch.float32)
    codes = q.codes(x)
    out = q(x)
    assert torch.equal(table[codes], out)
    assert set(codes.tolist()) == set(range(expected_levels))
    assert torch.unique(out).numel() == expected_levels


def test_exp2_form_matches_published_level_formula():
    """2^(-ceil(q/2)) * (sqrt2 if q odd), the published form, for every code 0..256 at 8 bit."""
    delta = torch.tensor(1.0)
    q = LogSqrt2Quantizer(8, 17, delta)
    codes = torch.arange(0, 256, dtype=torch.float32)
    published = 2 ** (-1 * torch.ceil(codes / 2)) * ((codes % 2) * (math.sqrt(2) - 1) + 1)
    x = (2 ** (-codes.double() / 2)).to(torch.float32)  # inputs whose code is exactly q
    assert torch.equal(q.codes(x), codes.to(torch.int64))
    assert torch.equal(q(x), published)
    published_table = torch.cat([published, torch.zeros(1)])  # + the zero code
    for d in (0.31, 0.73, 1e-3, 7.5):
        qd = LogSqrt2Quantizer(8, 17, torch.tensor(d))
        xd = torch.cat([x * d, x * d * 1.1, x * d * 0.95])
        expected = published_table[qd.codes(xd)] * torch.tensor(d)
        expected[qd.codes(xd) == qd.zero_code] = 0.0
        assert torch.equal(qd(xd), expected), d


def test_levels_are_powers_of_sqrt2():
    delta = torch.tensor(0.5)
    levels = log_sqrt2_levels(4, 17, delta)
    assert levels.numel() == 17 and float(levels[-1]) == 0.0
    for q, value in enumerate(levels[:-1].tolist()):
        assert value == pytest.approx(0.5 * 2 ** (-q / 2), rel=1e-6)
    assert torch.equal(log_sqrt2_levels(4, 16, delta)[:-1], levels[:15])


def test_sqrt2_16_clamps_code_15_onto_smallest_level():
    q16 = LogSqrt2Quantizer(4, 16, torch.tensor(1.0))
    q17 = LogSqrt2Quantizer(4, 17, torch.tensor(1.0))
    x = torch.tensor([2**-7.5])  # c = 15 exactly
    assert float(q17(x)) == pytest.approx(2**-7.5, rel=1e-6)
    assert float(q16(x)) == pytest.approx(2**-7, rel=1e-6)
    x_zero = torch.tensor([2**-8.0])  # c = 16 -> zero in both
    assert float(q16(x_zero)) == 0.0 and float(q17(x_zero)) == 0.0


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_delta_rejected(delta):
    with pytest.raises(ConfigError):
        LogSqrt2Quantizer(4, 17, torch.tensor(delta))


@pytest.mark.parametrize(("bits", "variant"), [(1, 17), (9, 17), (4, 15), (4, 18)])
def test_bad_bits_or_variant(bits, variant):
    with pytest.raises(ConfigError):
        LogSqrt2Quantizer(bits, variant, torch.tensor(1.0))


def test_nan_input():
    q = LogSqrt2Quantizer(4, 17, torch.tensor(1.0))
    out = q(torch.tensor([float("nan"), 0.5]))
    assert math.isnan(float(out[0])) and float(out[1]) == 0.5
    with pytest.raises(ValueError):
        q.codes(torch.tensor([float("nan")]))
    # negative input is not a probability: NaN out, never silently a level
    assert math.isnan(float(q(torch.tensor([-0.25]))[0]))


def test_dtype_preserved():
    q = LogSqrt2Quantizer(4, 17, torch.tensor(1.0))
    x = torch.rand(100, dtype=torch.float64)
    assert q(x).dtype == torch.float64


@pytest.mark.parametrize("variant", [16, 17])
def test_levels_table_indexed_by_codes_equals_forward(variant):
    q = LogSqrt2Quantizer(4, variant, torch.tensor(0.6))
    x = torch.cat([torch.rand(50_000) * 0.8, torch.tensor([0.0, 1e-12, 0.6, 0.7])])
    assert torch.equal(q.levels()[q.codes(x)], q(x))
    assert q.levels().numel() == q.max_levels
