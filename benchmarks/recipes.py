"""Benchmark: calibration recipes (RepQ-ViT, BitLog2, AdaLog, PTQ4ViT, mixes) at several bit widths.

Every row calibrates the same model on the same 32 images (seed 0) and is evaluated on the same other
images; writes ``results/recipes_<model>.{md,json}`` with top-1/top-5, top-1 agreement with FP, mean
KL(FP || quantized), calibration seconds (image decoding excluded) and the metric-search evaluations,
plus the commit and the resolved configuration of every row.

    python benchmarks/recipes.py                                    # the README table
    python benchmarks/recipes.py --bits 4 --rows adalog repq-vit --eval-size 200

A row is a recipe name, optionally with options: ``bitlog2-half-17+post_gelu=adalog``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path

import torch

from attention_schemes import _accuracy, _logits, add_data_args, provenance, run_and_write
from vitquant import __version__
from vitquant.calibration import quantize_model
from vitquant.data import load_batch, make_loader
from vitquant.data.transforms import eval_transform
from vitquant.evaluation import FidelityMeter
from vitquant.models import create_model, resolve_model_name
from vitquant.compare.plan import parse_variant
from vitquant.recipes import build_qconfig
from vitquant.workflow import QuantizeJob, resolve_data

log = logging.getLogger("vitquant.benchmark")
DEFAULT_ROWS = ["repq-vit", "bitlog2-half-17", "adalog", "ptq4vit", "bitlog2-half-17+post_gelu=adalog"]


def parse_row(row: str) -> tuple[str, dict[str, str | int]]:
    """``recipe+key=value+...`` -> (recipe, typed options), as ``vitquant compare`` reads a variant."""
    recipe, options = parse_variant(row)
    return recipe, dict(options)


def measure_row(model, calib_images, batches, labels, fp_logits, qconfig, name: str, bits: int) -> tuple[dict, object]:
    """Calibrate ``qconfig`` and evaluate it on the batches: the row (with the resolved configuration)
    and the calibration result."""
    log.info("W%dA%d %s ...", bits, bits, name)
    result = quantize_model(model, calib_images, qconfig)
    q_logits, _ = _logits(result.model, batches)
    meter = _accuracy(q_logits, labels)
    fidelity = FidelityMeter()
    fidelity.update(fp_logits, q_logits)
    row = {
        "row": name, "bits": bits, "top1": meter.top1, "top5": meter.top5,
        "agreement": fidelity.top1_agreement, "mean_kl": fidelity.mean_kl,
        "calibration_seconds": result.seconds, "stage_seconds": result.stage_seconds,
        "passes": result.passes, "evaluations": sum(p.evaluations for p in result.points),
        "search_seconds_by_role": result.search_seconds_by_role(),
        "qconfig": result.qconfig.to_dict(),
    }
    log.info("W%dA%d %s: top-1 %.2f %%, agreement %.2f %%, calibration %.1f s", bits, bits, name,
             meter.top1, fidelity.top1_agreement, result.seconds)
    return row, result


def load_eval(args: argparse.Namespace):
    """The model, its calibration batch, the evaluation batches and labels, and the FP logits."""
    job = QuantizeJob(model=args.model, weights=args.weights, calib_data=args.data, eval_data=args.data,
                      calib_size=args.calib_size, eval_size=args.eval_size, seed=args.seed)
    model, weights_source = create_model(job.model, job.weights)
    transform = eval_transform(model)
    data = resolve_data(job)
    calib_images = load_batch(data.calibration, transform)
    batches, labels = [], []
    for images, target, _ in make_loader(data.evaluation, transform, args.batch_size):
        batches.append(images)
        labels.append(target)
    label_tensor = torch.cat(labels)
    fp_logits, _ = _logits(model, batches)
    return model, weights_source, data, calib_images, batches, label_tensor, fp_logits


def run(args: argparse.Namespace) -> dict:
    model, weights_source, data, calib_images, batches, label_tensor, fp_logits = load_eval(args)
    fp = _accuracy(fp_logits, label_tensor)
    rows = [{"row": "FP32", "bits": None, "top1": fp.top1, "top5": fp.top5, "agreement": 100.0, "mean_kl": 0.0,
             "calibration_seconds": None, "evaluations": None, "qconfig": None}]
    for bits in args.bits:
        for spec in args.rows:
            recipe, options = parse_row(spec)
            qconfig = build_qconfig(recipe, bits, bits, **options)
            row, _ = measure_row(model, calib_images, batches, label_tensor, fp_logits, qconfig, spec, bits)
            rows.append(row)
    return {
        "command": "python benchmarks/recipes.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source,
        "calibration_images": len(calib_images), "evaluation_images": len(label_tensor),
        "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "torch": torch.__version__,
        "vitquant": __version__, **provenance(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"`{res['model']}`, calibrated on {res['calibration_images']} images (seed {res['seed']}), evaluated on "
        f"{res['evaluation_images']} other images of `{Path(res['eval_dir']).name}`; {res['threads']} CPU threads, "
        f"torch {res['torch']}; commit {str(res.get('commit'))[:10]}{' (uncommitted changes)' if res.get('dirty') else ''}.",
        "",
        "| W/A | recipe | top-1 % | top-5 % | agreement % | mean KL | calib s | search evaluations |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        bits = "FP32" if r["bits"] is None else f"W{r['bits']}A{r['bits']}"
        name = "-" if r["bits"] is None else r["row"]
        calib = "-" if r["calibration_seconds"] is None else f"{r['calibration_seconds']:.1f}"
        evals = "-" if r["evaluations"] is None else str(r["evaluations"])
        lines.append(f"| {bits} | {name} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} | "
                     f"{r['mean_kl']:.4f} | {calib} | {evals} |")
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3], help="W/A bit widths (default 4 3)")
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, f"recipes_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
