"""The points table of a JSON report: a real report of the tiny ViT's main job, a sweep results file
made from it, and reports that are not what the command needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitquant.errors import ConfigError, ReportError
from vitquant.inspection import inspect_file, load_report
from vitquant.inspection.table import compact_number


def _line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name + " "))


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_table_of_a_tiny_report(tiny_job_files):
    report_path, _ = tiny_job_files
    report = json.loads(report_path.read_text())
    points = report["calibration"]["points"]
    inspection = inspect_file(report_path)
    assert inspection.source == "report" and inspection.rows == points
    text = inspection.format()
    assert text.splitlines()[0] == f"{report_path}: report, {len(points)} quantization points"
    assert "deit_tiny_patch16_224  W4A4  recipe bitlog2-half-17  calibrated on 2 images" in text.splitlines()[1]
    assert _line(text, "point").split() == ["point", "role", "quantizer", "bits", "levels", "params"]
    for point in points:  # the fitted values, as the report holds them
        line, tensors = _line(text, point["name"]), point["params"]["tensors"]
        used = "-" if point["levels_used"] is None else point["levels_used"]
        assert f" {point['role']} " in line and f" {used}/{point['max_levels']} " in line
        for name, value in tensors.items():
            if isinstance(value, dict):
                count = 1
                for n in value["shape"]:
                    count *= n
                assert f"{name}[{count}] {compact_number(value['min'])}.." in line, line
            else:
                assert f"{name} {compact_number(value)}" in line, line
    softmax = _line(text, "blocks.0.attn.av.a_quant")
    assert "BitLog2_Half_17" in softmax and "half True, variant 17, divisor " in softmax and "/17 " in softmax
    assert "scale[144] " in _line(text, "blocks.0.attn.qkv.weight")  # per output channel
    json.dumps(inspection.to_dict(), allow_nan=False)


def test_role_filter_and_markdown(tiny_job_files):
    report_path, _ = tiny_job_files
    inspection = inspect_file(report_path, role="post_softmax")
    assert [row["name"] for row in inspection.rows] == ["blocks.0.attn.av.a_quant", "blocks.1.attn.av.a_quant"]
    assert inspection.summary[0].endswith("quantization points, 2 of role post_softmax")
    table = inspection.format(markdown=True).split("\n\n")[1].splitlines()
    assert table[:2] == ["| point | role | quantizer | bits | levels | params |", "|---|---|---|---|---|---|"]
    assert len(table) == 4 and all(line.startswith("| blocks.") and line.endswith(" |") for line in table[2:])
    with pytest.raises(ConfigError, match=r"--role 'post_gleu': nothing of that role in .*; present: .*post_gelu"):
        inspect_file(report_path, role="post_gleu")
    with pytest.raises(ConfigError, match="--op filters an integer program's ops"):
        inspect_file(report_path, op="requant")


def test_sweep_results_file(tiny_job_files, tmp_path):
    report = json.loads(tiny_job_files[0].read_text())
    job = {"model": "deit_tiny", "recipe": "bitlog2-half-17", "w_bits": 4, "a_bits": 4}
    ok = _write(tmp_path / "ok.json", {"status": "ok", "job": job, **report})
    assert inspect_file(ok).rows == report["calibration"]["points"]
    failed = _write(tmp_path / "failed.json", {"status": "failed", "job": job, "error": "out of memory"})
    with pytest.raises(ReportError, match=r"sweep deit_tiny bitlog2-half-17 W4A4 failed, .*\(its error: out of memory\)"):
        inspect_file(failed)
    with pytest.raises(ReportError, match="status 'running'"):
        load_report(_write(tmp_path / "odd.json", {"status": "running", **report}))


def test_report_without_parameters_is_shown_with_a_note(tiny_job_files, tmp_path):
    report = json.loads(tiny_job_files[0].read_text())
    for point in report["calibration"]["points"]:
        del point["params"]  # as reports written before they were recorded
    inspection = inspect_file(_write(tmp_path / "old.json", report))
    assert "(no fitted parameters: the report was written before vitquant recorded them)" in inspection.summary
    assert {cells[-1] for cells in inspection.cells} == {"-"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fp": {"top1": 70.0}}, r"has no calibration.points: not a 'vitquant quantize --json' report"),
        ({"calibration": {"points": {}}}, "has no calibration.points"),
        ({"program": {}, "integer": {}}, "it is a 'vitquant run' report: inspect the .vqm itself"),
        ({"calibration": {"points": [{"name": "a", "role": "weight"}]}},
         r"calibration.points\[0\] lacks quantizer, bits, max_levels, levels_used"),
        ({"calibration": {"points": ["a"]}}, r"calibration.points\[0\] lacks name"),
        ([1, 2], "holds a JSON list, not a report object"),
    ],
)
def test_json_that_is_not_a_report(data, message, tmp_path):
    with pytest.raises(ReportError, match=message):
        inspect_file(_write(tmp_path / "r.json", data))


def test_unreadable_reports(tmp_path):
    with pytest.raises(ReportError, match="report not found"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"calibration": ')
    with pytest.raises(ReportError, match="bad.json is not valid JSON"):
        inspect_file(bad)
    bad.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ReportError, match="cannot read report"):
        inspect_file(bad)
