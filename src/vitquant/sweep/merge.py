"""Merge a sweep's results files into one markdown table; failed jobs (and unreadable files) are listed
under it, never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitquant.errors import DataError

__all__ = ["SweepResults", "markdown_table", "read_results"]

COLUMNS = ("model", "recipe", "bits", "images", "FP top-1 %", "top-1 %", "top-5 %", "agreement %", "KL", "calib s")


@dataclass
class SweepResults:
    """The successful jobs' rows (sorted) and the failures ``{"file", "job", "error"}``."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def _row(record: dict[str, Any]) -> dict[str, Any]:
    job, q, fidelity = record["job"], record["quantized"], record["fidelity"]
    return {
        "model": job["model"], "recipe": job["recipe"], "w_bits": job["w_bits"], "a_bits": job["a_bits"],
        "images": q["images"], "fp_top1": record["fp"]["top1"], "top1": q["top1"], "top5": q["top5"],
        "agreement": fidelity["top1_agreement"], "kl": fidelity["mean_kl"],
        "calibration_seconds": record["calibration_seconds"],
    }


def read_results(folder: Path | str) -> SweepResults:
    """Read every ``*.json`` results file of ``folder``: :class:`DataError` if it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"sweep folder {folder} does not exist or is not a directory")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"no results files (*.json) in {folder}")
    results = SweepResults()
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            status = record.get("status")
            if status == "ok":
                results.rows.append(_row(record))
                continue
            error = record["error"] if status == "failed" else f"status {status!r}: not a sweep results file"
            results.failed.append({"file": path.name, "job": record.get("job"), "error": error})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            results.failed.append({"file": path.name, "job": None, "error": f"unreadable results file: {exc!r}"})
    results.rows.sort(key=lambda r: (r["model"], r["recipe"], -r["w_bits"], -r["a_bits"]))
    return results


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["model"], row["recipe"], f"W{row['w_bits']}A{row['a_bits']}", str(row["images"]),
        f"{row['fp_top1']:.2f}", f"{row['top1']:.2f}", f"{row['top5']:.2f}", f"{row['agreement']:.2f}",
        f"{row['kl']:.4f}", "-" if row["calibration_seconds"] is None else f"{row['calibration_seconds']:.1f}",
    ]


def _job_label(failure: dict[str, Any]) -> str:
    job = failure["job"]
    if not isinstance(job, dict):
        return f"`{failure['file']}`"
    return f"{job.get('model')} {job.get('recipe')} W{job.get('w_bits')}A{job.get('a_bits')} (`{failure['file']}`)"


def markdown_table(results: SweepResults) -> str:
    """The table of the successful jobs, then ``Failed jobs (N):`` with one line per failure."""
    lines = []
    if results.rows:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in results.rows]
    else:
        lines.append("No job succeeded.")
    if results.failed:
        lines += ["", f"Failed jobs ({len(results.failed)}):"]
        lines += [f"- {_job_label(f)}: {f['error']}" for f in results.failed]
    return "\n".join(lines) + "\n"
