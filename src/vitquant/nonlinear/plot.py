"""The layer-wise sensitivity figure, in the style of Figure 1 of the Mixed Non-linear Quantization paper:
one panel per op type; per layer, bars = SQNR diff of each kernel family, lines = its output ASQNR,
and the chosen family marked under the axis. Needs matplotlib (a dependency of vitquant)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitquant.kernels.base import FAMILIES, OPS

COLORS = {"ivit": "#1f77b4", "ibert": "#ff7f0e", "fqvit": "#2ca02c"}


def plot_sensitivity(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """Write the figure for a ``NonlinearReport.to_dict()`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.2 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        layers = list(dict.fromkeys(r["layer"] for r in rows if r["op"] == op))
        families = [f for f in FAMILIES if any(r["family"] == f and r["op"] == op for r in rows)]
        width = 0.8 / max(len(families), 1)
        line_ax = ax.twinx()
        for k, family in enumerate(families):
            by_layer = {r["layer"]: r for r in rows if r["family"] == family and r["op"] == op}
            xs = [i for i, layer in enumerate(layers) if layer in by_layer]
            diffs = [by_layer[layers[i]]["sqnr_diff"] for i in xs]
            outs = [by_layer[layers[i]]["output_asqnr"] for i in xs]
            offset = (k - (len(families) - 1) / 2) * width
            ax.bar([x + offset for x in xs], diffs, width, color=COLORS.get(family), alpha=0.55, label=f"{family} SQNR diff")
            line_ax.plot(xs, outs, marker="o", ms=3, color=COLORS.get(family), label=f"{family} output ASQNR")
        chosen = report.get("choices", {})
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([f"{_short(layer)}\n[{chosen.get(layer, '-')}]" for layer in layers], fontsize=6, rotation=90)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("SQNR diff (dB, 20·log10)")
        line_ax.set_ylabel("output ASQNR")
        ax.set_title(f"{op} (rule {report.get('rule', '?')}; chosen family in brackets)", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + line_ax.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + line_ax.get_legend_handles_labels()[1]
        ax.legend(handles, labels, fontsize=6, ncol=2, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(layer: str) -> str:
    return layer.replace("blocks.", "b").replace("layers.", "s").replace(".attn.softmax", ".softmax").replace(".mlp.act", ".gelu")
