"""Report schema, relative throughput, text table and JSON file."""

import json

import pytest
import torch

from vitquant.errors import VitQuantError
from vitquant.evaluation import (
    REPORT_KEYS,
    ClassificationMeter,
    FidelityMeter,
    ModelRun,
    build_report,
    format_table,
    write_json,
)

LOGITS = torch.tensor(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [1.0, 9.0, 2.0, 3.0, 4.0, 5.0],
    ]
)


def _run(labels: list[int], seconds: float) -> ModelRun:
    meter = ClassificationMeter()
    meter.update(LOGITS, torch.tensor(labels))
    return ModelRun(meter=meter, forward_seconds=seconds, images=meter.images)


def _fp() -> ModelRun:
    return _run([0, 4, 0, 1], seconds=2.0)  # top1 50 %, top5 75 %, 2 images/s


def _quantized() -> ModelRun:
    return _run([0, 5, 5, 2], seconds=8.0)  # top1 75 %, top5 100 %, 0.5 images/s


def _fidelity() -> FidelityMeter:
    meter = FidelityMeter()
    meter.update(LOGITS, LOGITS)
    return meter


def _report(**overrides) -> dict:
    kwargs = dict(
        config={"model": "deit_tiny", "w_bits": 4},
        fp=_fp(),
        quantized=_quantized(),
        fidelity=_fidelity(),
        calibration_seconds=12.5,
    )
    kwargs.update(overrides)
    return build_report(**kwargs)


def test_schema_keys_and_values():
    report = _report(extra={"device": "cpu"})
    assert set(report) == set(REPORT_KEYS) | {"device"}
    assert report["config"] == {"model": "deit_tiny", "w_bits": 4}
    assert set(report["fp"]) == {"top1", "top5", "images", "images_per_second", "forward_seconds"}
    assert set(report["quantized"]) == set(report["fp"]) | {"relative_throughput"}
    assert set(report["fidelity"]) == {"top1_agreement", "mean_kl"}
    assert report["fp"]["top1"] == pytest.approx(50.0)
    assert report["fp"]["top5"] == pytest.approx(75.0)
    assert report["fp"]["images"] == 4
    assert report["fp"]["images_per_second"] == pytest.approx(2.0)
    assert report["fp"]["forward_seconds"] == pytest.approx(2.0)
    assert report["quantized"]["top1"] == pytest.approx(75.0)
    assert report["quantized"]["top5"] == pytest.approx(100.0)
    assert report["quantized"]["images_per_second"] == pytest.approx(0.5)
    assert report["fidelity"] == {"top1_agreement": pytest.approx(100.0), "mean_kl": pytest.approx(0.0)}
    assert report["calibration_seconds"] == 12.5
    assert report["device"] == "cpu"


def test_relative_throughput_is_quantized_over_fp():
    report = _report()
    assert report["quantized"]["relative_throughput"] == pytest.approx(0.5 / 2.0)
    faster = _report(quantized=_run([0, 5, 5, 2], seconds=0.5))  # 8 images/s vs 2
    assert faster["quantized"]["relative_throughput"] == pytest.approx(4.0)


def test_report_without_quantized_model():
    report = _report(quantized=None, fidelity=None, calibration_seconds=None)
    assert set(report) == set(REPORT_KEYS)
    assert report["quantized"] is None
    assert report["fidelity"] is None
    assert report["calibration_seconds"] is None


def test_extra_cannot_overwrite_reserved_keys():
    with pytest.raises(ValueError, match="fp"):
        _report(extra={"fp": {}})


def test_config_is_copied():
    config = {"model": "deit_tiny"}
    report = _report(config=config)
    config["model"] = "changed"
    assert report["config"]["model"] == "deit_tiny"


def test_format_table_contains_numbers():
    text = format_table(_report())
    lines = text.splitlines()
    fp_row = next(line for line in lines if line.startswith("FP"))
    q_row = next(line for line in lines if line.startswith("quantized"))
    assert fp_row.split() == ["FP", "50.00", "75.00", "2.0"]
    assert q_row.split() == ["quantized", "75.00", "100.00", "0.5"]
    assert "100.00 %" in text  # agreement
    assert "0.000000" in text  # KL
    assert "12.5 s" in text  # calibration time
    assert "0.250x" in text  # relative throughput
    assert len(lines[0]) == len(fp_row) == len(q_row)  # fixed width


def test_format_table_without_quantized_model():
    text = format_table(_report(quantized=None, fidelity=None, calibration_seconds=None))
    q_row = next(line for line in text.splitlines() if line.startswith("quantized"))
    assert q_row.split() == ["quantized", "-", "-", "-"]
    assert "50.00" in text
    assert "calibration time: -" in text


def test_write_json_round_trips_and_creates_dirs(tmp_path):
    report = _report(extra={"notes": ["a", 1.25]})
    path = tmp_path / "nested" / "dir" / "report.json"
    write_json(report, path)
    assert json.loads(path.read_text()) == report
    assert path.read_text().startswith('{\n  "config"')  # indent=2
    write_json(report, str(tmp_path / "as_str.json"))
    assert json.loads((tmp_path / "as_str.json").read_text()) == report


def test_write_json_unwritable_path_raises_with_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / "report.json"
    with pytest.raises(VitQuantError, match="a_file"):
        write_json(_report(), target)
