"""The text of the inspection tables: aligned columns, markdown, compact parameters and row selection."""

from __future__ import annotations

import pytest

from vitquant.errors import ConfigError
from vitquant.inspection.table import compact_number, compact_params, format_table, select_rows


def test_text_and_markdown_tables():
    cells = [["a.weight", "1/16", "scale 0.1"], ["longer.name", "-/3", "x|y"]]
    assert format_table(("point", "levels", "params"), cells) == (
        "point        levels  params\n"
        "a.weight     1/16    scale 0.1\n"
        "longer.name  -/3     x|y"
    )
    assert format_table(("point", "levels", "params"), cells, markdown=True).splitlines() == [
        "| point | levels | params |", "|---|---|---|", "| a.weight | 1/16 | scale 0.1 |", "| longer.name | -/3 | x\\|y |",
    ]


def test_compact_params():
    params = {
        "kind": "bitlog2", "meta": {"bits": 4, "half": True, "variant": 17},
        "tensors": {"divisor": 329, "scale": {"shape": [3, 1, 1], "min": 0.00123456, "max": 0.052, "mean": 0.02},
                    "zero_point": {"shape": [192], "min": 0, "max": 15, "mean": 7.5},
                    "same": {"shape": [4], "min": 2, "max": 2, "mean": 2.0}, "gone": None},
    }
    assert compact_params(params) == (
        "half True, variant 17, divisor 329, scale[3] 0.001235..0.052, zero_point[192] 0..15, same[4] 2, gone -"
    )
    assert compact_params(None) == "-" and compact_params({"kind": "x", "meta": {"bits": 8}, "tensors": {}}) == "-"
    assert compact_params({"meta": "junk", "tensors": {"s": {"shape": "?", "min": 1, "max": 2}}}) == "s[?] 1..2"
    assert [compact_number(v) for v in (0.0123456, 1e-9, 12, None, float("nan"))] == ["0.01235", "1e-09", "12", "-", "nan"]


def test_select_rows():
    rows = [{"role": "weight"}, {"role": "post_gelu"}, {"role": "weight"}]
    assert select_rows(rows, "role", None, "--role", "r.json") is rows
    assert select_rows(rows, "role", "weight", "--role", "r.json") == [rows[0], rows[2]]
    with pytest.raises(ConfigError, match="--role 'x': nothing of that role in r.json; present: post_gelu, weight"):
        select_rows(rows, "role", "x", "--role", "r.json")
