"""Benchmark: QwT compensation (``vitquant.compensation``) after calibration, and after reconstruction,
on the real DeiT-Tiny: one row per stage added, so that each stage's gain is visible.

Every row calibrates on the same 32 images (seed 0); reconstruction and compensation use those same
calibration images; all rows and FP are evaluated on the same other images. Each figure is given on
three image sets: the ``tune`` subset (the ``--tune-size`` images ``--eval-size N`` would draw with the
same seed; exploratory runs and every setting choice used only these), the ``held-out`` rest, and all
of them. Writes ``results/compensation_<model>[_<tag>].{md,json}`` with top-1, agreement with FP and
mean KL per set, the seconds of each stage, the per-block fits, the settings and the commit.

    python benchmarks/compensation.py --bits 4 3 --rows bitlog2-half-17 adalog        # calibration only
    python benchmarks/compensation.py --bits 4 3 --rows bitlog2-recon --reconstruct --tag recon
    python benchmarks/compensation.py --bits 4 --rows bitlog2-half-17 --rotate hadamard --tag rotated
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from attention_schemes import _logits, add_data_args, commit_note, environment, run_and_write
from recipes import load_eval, parse_row
from vitquant.calibration import quantize_model
from vitquant.compensation import CompensationConfig, compensate
from vitquant.data.splits import split_calibration_eval
from vitquant.evaluation import FidelityMeter
from vitquant.evaluation.metrics import ClassificationMeter
from vitquant.models import resolve_model_name
from vitquant.recipes import build_qconfig
from vitquant.reconstruction import ReconstructionConfig, reconstruct
from vitquant.rotation import rotate
from vitquant.workflow import QuantizeJob, resolve_data

log = logging.getLogger("vitquant.benchmark")
SETS = ("tune", "held_out", "all")


def tune_mask(args: argparse.Namespace, data) -> torch.Tensor:
    """True for the evaluation images in the tuning subset: those ``--eval-size tune_size`` draws."""
    job = QuantizeJob(model=args.model, calib_data=args.data, eval_data=args.data, calib_size=args.calib_size,
                      eval_size=args.tune_size, seed=args.seed)
    tuned = {r.path.resolve() for r in resolve_data(job).evaluation}
    return torch.tensor([r.path.resolve() in tuned for r in data.evaluation])


def measured(logits: torch.Tensor, labels: torch.Tensor, fp_logits: torch.Tensor, mask: torch.Tensor) -> dict:
    """Top-1, agreement with FP and mean KL on the tuning subset, the held-out rest and all images."""
    out = {}
    for name, keep in zip(SETS, (mask, ~mask, torch.ones_like(mask))):
        meter, fidelity = ClassificationMeter(), FidelityMeter()
        meter.update(logits[keep], labels[keep])
        fidelity.update(fp_logits[keep], logits[keep])
        out[name] = {"images": int(keep.sum()), "top1": meter.top1, "agreement": fidelity.top1_agreement,
                     "mean_kl": fidelity.mean_kl}
    return out


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    mask = tune_mask(args, data)
    settings = None
    if args.reconstruct:
        given = {k: v for k, v in (("reg_weight", args.recon_reg_weight), ("weight_lr", args.recon_lr)) if v is not None}
        settings = ReconstructionConfig(seed=args.seed, **given)
    comp_config = CompensationConfig(ridge=args.ridge, bits=args.comp_bits)
    rows = [{"row": "FP32", "bits": None, "stage": "-", **measured(fp_logits, labels, fp_logits, mask)}]
    float_model, construction = (model, None) if args.rotate == "none" else rotate(model, args.rotate, args.seed)
    stage0 = "calibration" if args.rotate == "none" else f"{args.rotate} rotation + calibration"
    for bits in args.bits:
        for spec in args.rows:
            recipe, options = parse_row(spec)
            qconfig = build_qconfig(recipe, bits, bits, **options)
            log.info("W%dA%d %s: calibrating ...", bits, bits, spec)
            result = quantize_model(float_model, calib_images, qconfig)
            seconds = {"calibration": result.seconds}

            def row(stage: str, qmodel: torch.nn.Module, extra: dict | None = None) -> dict:
                logits, _ = _logits(qmodel, batches)
                r = {"row": spec, "bits": bits, "stage": stage, **measured(logits, labels, fp_logits, mask),
                     "seconds": dict(seconds), "qconfig": result.qconfig.to_dict(), **(extra or {})}
                log.info("W%dA%d %s %s: top-1 %.2f %% (tune %.2f, held-out %.2f), KL %.4f", bits, bits, spec, stage,
                         r["all"]["top1"], r["tune"]["top1"], r["held_out"]["top1"], r["all"]["mean_kl"])
                return r

            rows.append(row(stage0, result.model))
            base, stage = result, stage0
            if settings is not None:
                recon = reconstruct(float_model, result, calib_images, settings)
                seconds["reconstruction"] = recon.seconds
                rows.append(row("+ reconstruction", recon.model, {"reconstruction": recon.to_dict()}))
                base, stage = recon.calibration, "+ reconstruction"
            comp = compensate(float_model, base, calib_images, comp_config)
            seconds["compensation"] = comp.seconds
            rows.append(row(f"{stage} + QwT" if stage != stage0 else "+ QwT", comp.model,
                            {"compensation": comp.to_dict()}))
    return {
        "command": "python benchmarks/compensation.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source,
        "calibration_images": len(calib_images), "evaluation_images": len(labels),
        "tune_images": int(mask.sum()), "held_out_images": int((~mask).sum()),
        "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed,
        "reconstruction_settings": None if settings is None else settings.to_dict(),
        "compensation_settings": comp_config.to_dict(), "rotation": args.rotate, "rotation_construction": construction,
        **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    recon = res["reconstruction_settings"]
    lines = [
        f"`{res['model']}`, calibrated on {res['calibration_images']} images (seed {res['seed']}), evaluated on "
        f"{res['evaluation_images']} other images: {res['tune_images']} in the tuning subset, {res['held_out_images']} "
        f"held out; compensation {res['compensation_settings']}"
        + (f"; residual stream rotated ({res['rotation']}) before calibration" if res.get("rotation", "none") != "none" else "")
        + (f"; reconstruction {recon['iters']} steps per block, batch {recon['batch_size']}, λ {recon['reg_weight']:g}, "
           f"rounding lr {recon['weight_lr']:g}" if recon else "")
        + f"; {commit_note(res)}.",
        "",
        "| W/A | recipe | stage | top-1 % (all) | top-1 % (tune) | top-1 % (held-out) | agreement % (all) | "
        "agreement % (held-out) | mean KL (all) | mean KL (held-out) | seconds (calib / recon / QwT) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        s = r.get("seconds", {})
        secs = " / ".join("-" if k not in s else f"{s[k]:.1f}" for k in ("calibration", "reconstruction", "compensation"))
        bits = "FP32" if r["bits"] is None else f"W{r['bits']}A{r['bits']}"
        lines.append(
            f"| {bits} | {r['row']} | {r['stage']} | {r['all']['top1']:.2f} | {r['tune']['top1']:.2f} | "
            f"{r['held_out']['top1']:.2f} | {r['all']['agreement']:.2f} | {r['held_out']['agreement']:.2f} | "
            f"{r['all']['mean_kl']:.4f} | {r['held_out']['mean_kl']:.4f} | {secs if r['bits'] else '-'} |")
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--bits", nargs="+", type=int, default=[4, 3])
    p.add_argument("--rows", nargs="+", default=["bitlog2-half-17", "adalog"])
    p.add_argument("--reconstruct", action="store_true", help="reconstruct (default settings) before compensating")
    p.add_argument("--recon-reg-weight", type=float, help="λ of the rounding regulariser (default: ReconstructionConfig's)")
    p.add_argument("--recon-lr", type=float, help="learning rate of the rounding variables (default: ReconstructionConfig's)")
    p.add_argument("--ridge", type=float, default=CompensationConfig.ridge)
    p.add_argument("--comp-bits", type=int, default=CompensationConfig.bits)
    p.add_argument("--rotate", default="none", help="rotate the FP model's residual stream first: hadamard, orthogonal")
    p.add_argument("--tune-size", type=int, default=300, help="evaluation images in the tuning subset (default 300)")
    p.add_argument("--tag", help="suffix of the results files' names")
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, f"compensation_{args.model}" + (f"_{args.tag}" if args.tag else ""))


if __name__ == "__main__":
    sys.exit(main())
