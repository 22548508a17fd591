"""Benchmark: integer non-linear kernels (I-ViT, I-BERT, FQ-ViT) and the mixed per-layer choice.

Every row calibrates the same model on the same 32 images (seed 0) with the same linear recipe and
evaluates on the same other images; rows differ only in what runs Softmax, GELU and LayerNorm:
``float`` (exact ops), one family everywhere, or ``mixed`` under each rule. Writes
``results/nonlinear_<model>.{md,json}`` (top-1, FP agreement, KL, calibration seconds, per-layer
sensitivity table of every row) and, per bit width, the layer-wise figure of the mixed row
``results/nonlinear_<model>_w<b>a<b>.png`` (SQNR diff bars and output ASQNR lines per family).

    python benchmarks/nonlinear.py                               # W8A8 and W6A6, all rows
    python benchmarks/nonlinear.py --bits 8 --eval-size 200      # quicker
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path

import torch

from attention_schemes import _accuracy, add_data_args, provenance, run_and_write
from recipes import load_eval, measure_row
from vitquant import __version__
from vitquant.models import resolve_model_name
from vitquant.nonlinear import NonlinearConfig
from vitquant.nonlinear.plot import plot_sensitivity
from vitquant.recipes import build_qconfig

log = logging.getLogger("vitquant.benchmark")
DEFAULT_ROWS = ["float", "ivit", "ibert", "fqvit", "mixed:sqnr-diff", "mixed:output-sqnr"]


def nonlinear_config(row: str, bits: int) -> NonlinearConfig:
    choice, _, rule = row.partition(":")
    return NonlinearConfig.everywhere(choice, rule=rule or "sqnr-diff")


def run(args: argparse.Namespace) -> dict:
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    fp = _accuracy(fp_logits, labels)
    rows = [{"row": "FP32", "bits": None, "top1": fp.top1, "top5": fp.top5, "agreement": 100.0, "mean_kl": 0.0,
             "calibration_seconds": None, "evaluations": None, "qconfig": None, "nonlinear": None}]
    figures = {}
    for bits in args.bits:
        for name in args.rows:
            qconfig = build_qconfig(args.recipe, bits, bits).with_nonlinear(nonlinear_config(name, bits))
            row, result = measure_row(model, calib_images, batches, labels, fp_logits, qconfig, name, bits)
            row["nonlinear"] = None if result.nonlinear is None else result.nonlinear.to_dict()
            rows.append(row)
            if name == args.figure_row and row["nonlinear"] is not None:
                path = args.out / f"nonlinear_{args.model}_w{bits}a{bits}.png"
                title = f"{resolve_model_name(args.model)} W{bits}A{bits} ({args.recipe}), {name}"
                figures[str(bits)] = plot_sensitivity(row["nonlinear"], path, title).name
    return {
        "command": "python benchmarks/nonlinear.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source, "recipe": args.recipe,
        "calibration_images": len(calib_images), "evaluation_images": len(labels),
        "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "torch": torch.__version__,
        "vitquant": __version__, **provenance(), "rows": rows, "figures": figures,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"`{res['model']}`, linear recipe `{res['recipe']}`, calibrated on {res['calibration_images']} images "
        f"(seed {res['seed']}), evaluated on {res['evaluation_images']} other images of "
        f"`{Path(res['eval_dir']).name}`; kernel inputs at max(activation bits, 6) bits; {res['threads']} CPU "
        f"threads, torch {res['torch']}; commit {str(res.get('commit'))[:10]}"
        f"{' (uncommitted changes)' if res.get('dirty') else ''}.",
        "",
        "| W/A | non-linear | top-1 % | top-5 % | agreement % | mean KL | calib s | softmax | GELU | LayerNorm |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in res["rows"]:
        bits = "FP32" if r["bits"] is None else f"W{r['bits']}A{r['bits']}"
        name = "-" if r["bits"] is None else r["row"]
        calib = "-" if r["calibration_seconds"] is None else f"{r['calibration_seconds']:.1f}"
        counts = (r.get("nonlinear") or {}).get("counts", {})
        per_op = [", ".join(f"{f} {n}" for f, n in counts.get(op, {}).items()) or "float" for op in ("softmax", "gelu", "layernorm")]
        lines.append(f"| {bits} | {name} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} | "
                     f"{r['mean_kl']:.4f} | {calib} | " + " | ".join(per_op) + " |")
    lines += ["", "Op columns: how many layers run each kernel family (the paper's Table 3).", "",
              f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--recipe", default="repq-vit", help="linear recipe of every row (default repq-vit)")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6], help="W/A bit widths (default 8 6)")
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="float, ivit, ibert, fqvit, mixed:RULE")
    p.add_argument("--figure-row", default="mixed:sqnr-diff", help="row whose per-layer figure is drawn")
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, f"nonlinear_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
