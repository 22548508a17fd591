"""Write a comparison out: ``results.json`` (every number and the figure data), the figures,
``report.md`` (table + figures by relative path) and ``report.html`` (self-contained: figures inlined
as base64 PNG, no external files or scripts)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from vitquant.compare.figures import draw_all
from vitquant.errors import VitQuantError
from vitquant.evaluation.report import write_json

__all__ = ["markdown_report", "html_report", "table_rows", "write_report"]

COLUMNS = ("variant", "top-1 %", "top-5 %", "agreement %", "mean KL", "calib s", "speed vs FP",
           "attn levels used (max)", "post-GELU levels used (max)")
FIGURE_TITLES = {
    "attention_levels": "Attention map and each quantizer's levels",
    "point_sqnr": "Per-layer SQNR of every quantization point",
    "post_gelu_grids": "Post-GELU activations and grids",
    "accuracy_vs_bits": "Accuracy against bits",
}


def _levels(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("points"):
        return "-"
    return f"{summary['levels_used_min']}-{summary['levels_used_max']} ({summary['max_levels']})"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The comparison table as text cells: FP first, then every variant (a failed one says so)."""
    fp = results["fp"]
    out = [["FP32", f"{fp['top1']:.2f}", f"{fp['top5']:.2f}", "100.00", "0.0000", "-", "1.00x", "-", "-"]]
    for r in results["rows"]:
        if r["status"] != "ok":
            out.append([r["variant"], "failed", "-", "-", "-", "-", "-", "-", "-"])
            continue
        out.append([
            r["variant"], f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['agreement']:.2f}", f"{r['mean_kl']:.4f}",
            f"{r['calibration_seconds']:.1f}", "-" if r["relative_throughput"] is None else f"{r['relative_throughput']:.2f}x",
            _levels(r["levels"].get("post_softmax")), _levels(r["levels"].get("post_gelu")),
        ])
    return out


def _caption(results: dict[str, Any]) -> str:
    commit = str(results.get("commit"))[:10] + (" (uncommitted changes)" if results.get("dirty") else "")
    return (f"`{results['model']}`, calibrated on {results['calibration_images']} images (seed {results['config']['seed']}), "
            f"evaluated on {results['evaluation_images']} other images of `{Path(results['eval_dir']).name}`; "
            f"FP and every variant on the same decoded images; speed = quantized / FP images/s on "
            f"{results['config']['timing_batch']} images, timed in turns; {results['threads']} "
            f"thread{'' if results['threads'] == 1 else 's'} on "
            f"{results['device']}, torch {results['torch']}; commit {commit}.")


def _failures(results: dict[str, Any]) -> list[str]:
    return [f"{r['variant']}: {r['error']}" for r in results["rows"] if r["status"] != "ok"]


def markdown_report(results: dict[str, Any], figures: dict[str, str]) -> str:
    """The report as markdown (figures by relative path)."""
    lines = [f"# Comparison on {results['model']}", "", _caption(results), "",
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * 6 + "---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(results)]
    failures = _failures(results)
    if failures:
        lines += ["", "Failed variants:", ""] + [f"- {f}" for f in failures]
    if results.get("skipped_images"):
        lines += ["", f"Skipped {len(results['skipped_images'])} undecodable images: "
                  + ", ".join(results["skipped_images"])]
    for name, file in figures.items():
        lines += ["", f"## {FIGURE_TITLES[name]}", "", f"![{FIGURE_TITLES[name]}]({file})"]
    lines += ["", f"Command: `{results.get('command', '').strip()}`"]
    return "\n".join(lines) + "\n"


def html_report(results: dict[str, Any], figures: dict[str, str], folder: Path) -> str:
    """The report as one self-contained HTML page (figures inlined)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in table_rows(results))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>vitquant compare: {esc(results['model'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
        "td:not(:first-child){text-align:right}img{max-width:100%;border:1px solid #eee}</style></head><body>",
        f"<h1>Comparison on {esc(results['model'])}</h1>",
        f"<p>{esc(_caption(results))}</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    failures = _failures(results)
    if failures:
        parts.append("<h3>Failed variants</h3><ul>" + "".join(f"<li>{esc(f)}</li>" for f in failures) + "</ul>")
    for name, file in figures.items():
        data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
        parts.append(f"<h2>{esc(FIGURE_TITLES[name])}</h2><img alt='{esc(FIGURE_TITLES[name])}' src='data:image/png;base64,{data}'>")
    parts.append(f"<p>Command: <code>{esc(results.get('command', '').strip())}</code></p></body></html>")
    return "\n".join(parts) + "\n"


def write_report(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write the results, figures and both reports into ``folder``; the paths written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        figures = draw_all(results, folder)
        results = {**results, "figures": figures}
        paths = {"json": folder / "results.json", "markdown": folder / "report.md", "html": folder / "report.html"}
        write_json(results, paths["json"])
        paths["markdown"].write_text(markdown_report(results, figures), encoding="utf-8")
        paths["html"].write_text(html_report(results, figures, folder), encoding="utf-8")
    except OSError as exc:
        raise VitQuantError(f"cannot write the comparison to {folder}: {exc}") from exc
    return {**paths, **{name: folder / file for name, file in figures.items()}}
