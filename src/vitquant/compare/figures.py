"""The compare figures (matplotlib, PNG), drawn from the plain data of the results dict.

- ``attention_levels.png``: the attention map of one layer on a log axis, one panel per variant, with
  the levels its post-softmax quantizer can emit drawn over it (the figure the BitLog2 paper opens with);
- ``point_sqnr.png``: SQNR of every quantization point, in model order, one line per variant
  (activations above, weights below);
- ``post_gelu_grids.png``: post-GELU histograms at a few layers with each variant's grid;
- ``accuracy_vs_bits.png``: top-1 of each recipe against the bit width, FP as a dashed line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["draw_all", "plot_accuracy_vs_bits", "plot_attention_levels", "plot_point_sqnr", "plot_post_gelu_grids"]

DPI = 110
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _bars(ax: Any, hist: dict[str, Any], log_x: bool) -> None:
    edges, counts = hist["edges"], hist["counts"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#b0b0b0", edgecolor="none", label="values")
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")


def _grid_caption(grid: dict[str, Any]) -> str:
    rows = "" if grid["distinct"] <= 1 else f"; row 0 of {grid['rows']}, {grid['distinct']} different grids"
    return f"{len(grid['values'])} levels{rows}"


def plot_attention_levels(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One panel per variant: the attention histogram (log x) with the variant's levels as vertical lines;
    the level 0 and the values below the first bin are counted in the panel's legend."""
    drawn = [r for r in _ok(rows) if r["figures"]["attention"] is not None]
    if not drawn:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(drawn), 1, figsize=(9, 1.9 * len(drawn) + 1.0), sharex=True, squeeze=False)
    for k, (ax, row) in enumerate(zip(axes[:, 0], drawn)):
        data = row["figures"]["attention"]
        hist, grid = data["histogram"], data["grid"]
        _bars(ax, hist, log_x=True)
        low = hist["edges"][0]
        levels = [v for v in grid["values"] if v >= low]
        color = PALETTE[k % len(PALETTE)]
        for v in levels:
            ax.axvline(v, color=color, lw=1.0, alpha=0.85)
        ax.plot([], [], color=color, lw=1.0, label=f"{len(levels)} levels >= {low:g} drawn ({_grid_caption(grid)}, 0 included)")
        ax.plot([], [], " ", label=f"{hist['below']:,} of {hist['values']:,} values < {low:g} (zeros {hist['zeros']:,})")
        ax.set_ylabel("count")
        ax.set_title(f"{row['variant']}: {data['quantizer']}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
        ax.set_xlim(low, 1.0)
    axes[-1, 0].set_xlabel(f"attention probability at {drawn[0]['figures']['attention']['point']} (log scale)")
    fig.suptitle(title or "Attention map and each quantizer's levels", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    return _save(fig, path)


def _short(name: str) -> str:
    return (name.replace("blocks.", "b").replace("layers.", "s").replace(".input_quant", "")
            .replace(".weight", "").replace("_quant", ""))


def plot_point_sqnr(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """SQNR (dB) of every point in model order: activation points (top), weights (bottom)."""
    drawn = _ok(rows)
    if not drawn:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(13, 7.5), squeeze=False)
    for ax, weights in zip(axes[:, 0], (False, True)):
        names: list[str] = []
        for row in drawn:
            for p in row["point_sqnr"]:
                if (p["role"] == "weight") == weights and p["name"] not in names:
                    names.append(p["name"])
        index = {n: i for i, n in enumerate(names)}
        for k, row in enumerate(drawn):
            pts = [p for p in row["point_sqnr"] if (p["role"] == "weight") == weights and p["sqnr_db"] is not None]
            xs = [index[p["name"]] for p in pts]
            ax.plot(xs, [p["sqnr_db"] for p in pts], marker="o", ms=2.5, lw=0.8, color=PALETTE[k % len(PALETTE)],
                    label=row["variant"])
        step = max(1, len(names) // 40)
        ax.set_xticks(range(0, len(names), step))
        ax.set_xticklabels([_short(n) for n in names[::step]], rotation=90, fontsize=6)
        ax.set_ylabel("SQNR (dB, 10·log10)")
        ax.set_title("weights (per layer)" if weights else "activation points (each point's own input)", fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.suptitle(title or "Per-layer SQNR of every quantization point", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_post_gelu_grids(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Rows = variants, columns = layers: the post-GELU histogram with the variant's grid as lines."""
    drawn = [r for r in _ok(rows) if r["figures"]["post_gelu"]]
    if not drawn:
        return None
    columns = max(len(r["figures"]["post_gelu"]) for r in drawn)
    plt = _pyplot()
    fig, axes = plt.subplots(len(drawn), columns, figsize=(3.3 * columns, 2.0 * len(drawn) + 1.0), squeeze=False)
    for i, row in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        for j in range(columns):
            ax = axes[i, j]
            panels = row["figures"]["post_gelu"]
            if j >= len(panels):
                ax.axis("off")
                continue
            data = panels[j]
            _bars(ax, data["histogram"], log_x=False)
            grid = data["grid"]
            for v in grid["values"]:
                ax.axvline(v, color=color, lw=0.6, alpha=0.8)
            ax.set_title(f"{_short(data['point'])}: {len(grid['values'])} levels", fontsize=7)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel(f"{row['variant']}\ncount", fontsize=7)
            if i == len(drawn) - 1:
                ax.set_xlabel("fc2 input point value (after any shift)", fontsize=7)
    fig.suptitle(title or "Post-GELU activations and each variant's grid", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, path)


def plot_accuracy_vs_bits(rows: Sequence[dict[str, Any]], fp_top1: float, path: Path, title: str = "") -> Path | None:
    """Top-1 against the activation bits (weight bits in the tick label), one line per recipe label."""
    drawn = _ok(rows)
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = list(dict.fromkeys(r["label"] for r in drawn))
    for k, label in enumerate(labels):
        pts = sorted((r["a_bits"], r["top1"]) for r in drawn if r["label"] == label)
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", color=PALETTE[k % len(PALETTE)], label=label)
    ax.axhline(fp_top1, color="black", ls="--", lw=1, label=f"FP32 ({fp_top1:.1f} %)")
    widths = sorted({(r["a_bits"], r["w_bits"]) for r in drawn})
    ax.set_xticks(sorted({a for a, _ in widths}))
    ax.set_xticklabels([f"A{a}\n(W{'/'.join(str(w) for b, w in widths if b == a)})" for a in sorted({a for a, _ in widths})])
    ax.set_xlabel("activation bits (weight bits)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "Accuracy against bits", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def draw_all(results: dict[str, Any], folder: Path) -> dict[str, str]:
    """Every figure of ``results`` into ``folder``: name -> file name (figures with no data are left out)."""
    rows, model = results["rows"], results["model"]
    images = results["evaluation_images"]
    made = {
        "attention_levels": plot_attention_levels(rows, folder / "attention_levels.png",
                                                  f"{model}: attention map and each quantizer's levels"),
        "point_sqnr": plot_point_sqnr(rows, folder / "point_sqnr.png", f"{model}: per-layer SQNR of every quantization point"),
        "post_gelu_grids": plot_post_gelu_grids(rows, folder / "post_gelu_grids.png", f"{model}: post-GELU activations and grids"),
        "accuracy_vs_bits": plot_accuracy_vs_bits(rows, results["fp"]["top1"], folder / "accuracy_vs_bits.png",
                                                  f"{model}: top-1 on {images} images against bits"),
    }
    return {name: path.name for name, path in made.items() if path is not None}
