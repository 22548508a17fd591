"""Merging results files: rows sorted, failures and unreadable files listed, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitquant.errors import DataError
from vitquant.sweep import markdown_table, read_results


def _ok(folder: Path, model: str, recipe: str, w: int, a: int, top1: float) -> None:
    record = {
        "status": "ok", "job": {"model": model, "recipe": recipe, "w_bits": w, "a_bits": a},
        "fp": {"top1": 80.0, "top5": 95.0, "images": 100},
        "quantized": {"top1": top1, "top5": 90.125, "images": 100},
        "fidelity": {"top1_agreement": 70.5, "mean_kl": 0.123456}, "calibration_seconds": 4.25,
    }
    (folder / f"{model}_{recipe}_w{w}a{a}.json").write_text(json.dumps(record))


def test_table_rows_sorted_and_failures_listed(tmp_path):
    _ok(tmp_path, "deit_tiny", "repq-vit", 3, 3, 40.0)
    _ok(tmp_path, "deit_tiny", "repq-vit", 4, 4, 60.0)
    _ok(tmp_path, "deit_tiny", "adalog", 4, 4, 61.0)
    (tmp_path / "deit_tiny_x_w9a9.json").write_text(json.dumps(
        {"status": "failed", "job": {"model": "deit_tiny", "recipe": "x", "w_bits": 9, "a_bits": 9}, "error": "bad bits"}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("ignored: not a results file")
    results = read_results(tmp_path)
    assert [(r["recipe"], r["w_bits"]) for r in results.rows] == [("adalog", 4), ("repq-vit", 4), ("repq-vit", 3)]
    assert [f["file"] for f in results.failed] == ["broken.json", "deit_tiny_x_w9a9.json"]
    table = markdown_table(results).splitlines()
    assert table[0] == "| model | recipe | bits | images | FP top-1 % | top-1 % | top-5 % | agreement % | KL | calib s |"
    assert table[2] == "| deit_tiny | adalog | W4A4 | 100 | 80.00 | 61.00 | 90.12 | 70.50 | 0.1235 | 4.2 |"
    assert table[6] == "Failed jobs (2):"
    assert table[7].startswith("- `broken.json`: unreadable results file")
    assert table[8] == "- deit_tiny x W9A9 (`deit_tiny_x_w9a9.json`): bad bits"


def test_only_failures(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"status": "failed", "job": None, "error": "boom"}))
    assert markdown_table(read_results(tmp_path)) == "No job succeeded.\n\nFailed jobs (1):\n- `a.json`: boom\n"


def test_a_report_without_status_is_listed_not_merged(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"fp": {}}))
    results = read_results(tmp_path)
    assert results.rows == [] and "not a sweep results file" in results.failed[0]["error"]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no results files"):
        read_results(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_results(tmp_path / "missing")
