"""The calibrated points of a JSON report: a ``vitquant quantize --json`` report, or a ``vitquant sweep``
results file (the same report with ``"status"`` and ``"job"``; a failed job has none)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitquant.errors import ReportError
from vitquant.inspection.table import Inspection, compact_params, select_rows

__all__ = ["COLUMNS", "POINT_KEYS", "load_report", "report_inspection"]

COLUMNS = ("point", "role", "quantizer", "bits", "levels", "params")
POINT_KEYS = ("name", "role", "quantizer", "bits", "max_levels", "levels_used")  # what every point must hold


def _check_sweep_status(path: Path, report: dict[str, Any]) -> None:
    """A sweep results file must be a successful job's."""
    status = report["status"]
    if status == "ok":
        return
    job = report.get("job") if isinstance(report.get("job"), dict) else {}
    label = f"{job.get('model')} {job.get('recipe')} W{job.get('w_bits')}A{job.get('a_bits')}" if job else "job"
    if status == "failed":
        raise ReportError(f"{path}: sweep {label} failed, so it has no calibrated points "
                          f"(its error: {report.get('error')})")
    raise ReportError(f"{path}: sweep results file with status {status!r} (expected 'ok')")


def _points(path: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """``calibration.points``, each checked to hold :data:`POINT_KEYS`."""
    calibration = report.get("calibration")
    points = calibration.get("points") if isinstance(calibration, dict) else None
    if not isinstance(points, list):
        hint = "; it is a 'vitquant run' report: inspect the .vqm itself" if "integer" in report else ""
        raise ReportError(f"{path} has no calibration.points: not a 'vitquant quantize --json' report "
                          f"or a sweep results file{hint}")
    for i, point in enumerate(points):
        missing = [key for key in POINT_KEYS if not isinstance(point, dict) or key not in point]
        if missing:
            raise ReportError(f"{path}: calibration.points[{i}] lacks {', '.join(missing)}")
    return points


def load_report(path: str | Path) -> dict[str, Any]:
    """The report at ``path`` as a dict, after checking that it is JSON with ``calibration.points``
    (and, for a sweep results file, status "ok"); :class:`ReportError` otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ReportError(f"report not found: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"cannot read report {path}: {err}") from err
    try:
        report = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(report, dict):
        raise ReportError(f"{path} holds a JSON {type(report).__name__}, not a report object")
    if "status" in report:
        _check_sweep_status(path, report)
    _points(path, report)
    return report


def _summary(path: Path, report: dict[str, Any], points: list[dict[str, Any]], role: str | None) -> list[str]:
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    calibration = report["calibration"]
    commit = str(config.get("commit") or "?")[:7]
    shown = f", {len(points)} of role {role}" if role is not None else ""
    lines = [
        f"{path}: report, {len(calibration['points'])} quantization points{shown}",
        f"{config.get('timm_model', '?')}  W{config.get('w_bits', '?')}A{config.get('a_bits', '?')}  "
        f"recipe {config.get('recipe', '?')}  calibrated on {calibration.get('images', '?')} images  commit {commit}",
    ]
    if points and all(p.get("params") is None for p in points):
        lines.append("(no fitted parameters: the report was written before vitquant recorded them)")
    return lines


def report_inspection(path: str | Path, report: dict[str, Any], role: str | None = None) -> Inspection:
    """One row per calibrated point of ``report`` (only those of ``role`` when given)."""
    path = Path(path)
    points = select_rows(_points(path, report), "role", role, "--role", str(path))
    cells = [
        [str(p["name"]), str(p["role"]), str(p["quantizer"]), str(p["bits"]),
         f"{'-' if p['levels_used'] is None else p['levels_used']}/{p['max_levels']}", compact_params(p.get("params"))]
        for p in points
    ]
    return Inspection(str(path), "report", _summary(path, report, points, role), COLUMNS, points, cells)
