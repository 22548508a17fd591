"""Turn evaluation results into a stable JSON-able dict, a text table, and a file."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from vitquant.errors import VitQuantError
from vitquant.evaluation.evaluate import ModelRun
from vitquant.evaluation.metrics import FidelityMeter

__all__ = ["REPORT_KEYS", "build_report", "format_table", "write_json"]

log = logging.getLogger(__name__)

REPORT_KEYS = ("config", "fp", "quantized", "fidelity", "calibration_seconds")


def _run_dict(run: ModelRun) -> dict:
    """Schema of one model's results."""
    return {
        "top1": run.meter.top1,
        "top5": run.meter.top5,
        "images": run.images,
        "images_per_second": run.images_per_second,
        "forward_seconds": run.forward_seconds,
    }


def _relative_throughput(quantized: ModelRun, fp: ModelRun) -> float | None:
    """Quantized images/s divided by fp images/s; None when the ratio is undefined."""
    fp_ips = fp.images_per_second
    if fp_ips == 0.0 or math.isinf(fp_ips):
        return None
    return quantized.images_per_second / fp_ips


def build_report(
    *,
    config: dict,
    fp: ModelRun,
    quantized: ModelRun | None,
    fidelity: FidelityMeter | None,
    calibration_seconds: float | None,
    extra: dict | None = None,
) -> dict:
    """Assemble the report dict; ``extra`` keys are merged at top level (no overriding)."""
    report: dict = {
        "config": dict(config),
        "fp": _run_dict(fp),
        "quantized": None,
        "fidelity": None,
        "calibration_seconds": calibration_seconds,
    }
    if quantized is not None:
        q = _run_dict(quantized)
        q["relative_throughput"] = _relative_throughput(quantized, fp)
        report["quantized"] = q
    if fidelity is not None:
        report["fidelity"] = {
            "top1_agreement": fidelity.top1_agreement,
            "mean_kl": fidelity.mean_kl,
        }
    clash = sorted(set(extra or {}) & set(REPORT_KEYS))
    if clash:
        raise ValueError(f"extra report keys would overwrite reserved keys: {clash}")
    report.update(extra or {})
    return report


def _fmt(value: float | None, spec: str) -> str:
    """Format a number, or ``-`` when absent."""
    return "-" if value is None else format(value, spec)


def _table_row(name: str, run: dict | None) -> str:
    """One fixed-width row: name, top-1, top-5, images/s."""
    if run is None:
        return f"{name:<10}{'-':>10}{'-':>10}{'-':>12}"
    return (
        f"{name:<10}{_fmt(run['top1'], '.2f'):>10}{_fmt(run['top5'], '.2f'):>10}"
        f"{_fmt(run['images_per_second'], '.1f'):>12}"
    )


def format_table(report: dict) -> str:
    """Human-readable fixed-width summary of a :func:`build_report` dict."""
    q = report.get("quantized")
    program = report.get("integer_program")
    lines = [
        f"{'model':<10}{'top-1 %':>10}{'top-5 %':>10}{'images/s':>12}",
        _table_row("FP", report["fp"]),
        _table_row("quantized" if program is None else "simulated", q),
    ]
    if program is not None:
        lines.append(_table_row("integer", program))
    fidelity = report.get("fidelity")
    if fidelity is not None:
        lines.append(f"top-1 agreement: {fidelity['top1_agreement']:.2f} %")
        lines.append(f"mean KL(fp || q): {fidelity['mean_kl']:.6f} nats")
    else:
        lines.append("top-1 agreement: -")
        lines.append("mean KL(fp || q): -")
    if program is not None:
        lines.append(f"integer program (saved; fast executor): top-1 agreement {program['agreement_quantized']:.2f} % "
                     f"with the simulated model, {program['agreement_fp']:.2f} % with FP (KL {program['kl_fp']:.4f})")
        lines.append("reported model: the integer program, what --save wrote and 'vitquant run' gives; the simulated "
                     "(fake-quantized) model rounds in float32 and can differ from it at rounding ties")
    if q is not None:
        lines.append(f"relative throughput: {_fmt(q.get('relative_throughput'), '.3f')}x")
    calib = report.get("calibration_seconds")
    lines.append(f"calibration time: {_fmt(calib, '.1f')} s" if calib is not None else "calibration time: -")
    return "\n".join(lines)


def write_json(report: dict, path: Path | str) -> None:
    """Write ``report`` as indented JSON, creating parent folders; VitQuantError on failure."""
    path = Path(path)
    text = json.dumps(report, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise VitQuantError(f"cannot write report to {path}: {exc}") from exc
    log.info("wrote report to %s", path)
