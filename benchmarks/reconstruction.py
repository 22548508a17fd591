"""Benchmark: calibration alone, + block reconstruction, + short quantization-aware training (QAT), on
the real DeiT-Tiny.

Every row calibrates on the same calibration images (seed 0); reconstruction trains on those same
calibration images; QAT (``vitquant train``'s trainer, from the calibrated model) on every image of the
folder that is not evaluated (the calibration images among them); all rows and FP are evaluated on the
same other images, which neither stage ever sees. Writes ``results/reconstruction_<model>.{md,json}``
with top-1/top-5, agreement with FP, mean KL, the seconds of each stage (image decoding excluded), the
per-block errors before/after, the training losses and both stages' settings, plus the commit.

    python benchmarks/reconstruction.py --bits 4 3 --eval-size 300 --qat-steps 43 --qat-batch-size 16 \
        --dgd-weight 0.01                                                # the README table
    python benchmarks/reconstruction.py --bits 4 --recon-iters 100 --qat-steps 20 --eval-size 300

A row is a recipe name, optionally with options as in ``benchmarks/recipes.py``:
``bitlog2-half-17+post_gelu=adalog``. The default row is ``bitlog2-recon``, the recipe made for
reconstruction.

``--nonlinear SPEC`` (``ivit``, ``ibert``, ``fqvit``, ``mixed:sqnr-diff``, ``mixed:output-sqnr``; default
``float``) gives every row integer non-linear kernels and integer residual adds (the integer-only model,
inputs on ``--nonlinear-bits``): calibration and evaluation run the kernels; reconstruction trains each
block with their float ops (the kernels are active again afterwards); QAT trains with the kernels in the
forward pass and a straight-through gradient (``--qat-kernels ste``, the default of ``vitquant train``):

    python benchmarks/reconstruction.py --bits 4 --nonlinear mixed:output-sqnr --qat-steps 43 --qat-batch-size 16
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from attention_schemes import _accuracy, _logits, add_data_args, environment, run_and_write
from recipes import load_eval, measure_row, parse_row
from vitquant.data import list_images
from vitquant.data.transforms import eval_transform
from vitquant.evaluation import FidelityMeter
from vitquant.models import resolve_model_name
from vitquant.nn.nonlinear import TRAIN_KERNELS
from vitquant.nonlinear import NonlinearConfig
from vitquant.qat import FolderImages, QATTrainer, TrainConfig
from vitquant.recipes import build_qconfig
from vitquant.reconstruction import ReconstructionConfig, reconstruct
from vitquant.reconstruction.config import LOSSES

log = logging.getLogger("vitquant.benchmark")
DEFAULT_ROWS = ["bitlog2-recon"]


def reconstruct_row(model, calibrated, calib_images, batches, labels, fp_logits, settings, name, bits) -> dict:
    """Reconstruct a calibrated model and evaluate it: the row."""
    log.info("W%dA%d %s + reconstruction ...", bits, bits, name)
    result = reconstruct(model, calibrated, calib_images, settings, progress=True)
    row = _evaluated_row(result.model, batches, labels, fp_logits, f"{name} + reconstruction")
    log.info("W%dA%d %s + reconstruction: top-1 %.2f %%, %.1f s", bits, bits, name, row["top1"], result.seconds)
    return {**row, "bits": bits, "calibration_seconds": calibrated.seconds, "reconstruction_seconds": result.seconds,
            "reconstruction": result.to_dict(), "qconfig": calibrated.qconfig.to_dict()}


def _evaluated_row(qmodel, batches, labels, fp_logits, name: str) -> dict:
    q_logits, _ = _logits(qmodel, batches)
    meter = _accuracy(q_logits, labels)
    fidelity = FidelityMeter()
    fidelity.update(fp_logits, q_logits)
    return {"row": name, "top1": meter.top1, "top5": meter.top5, "agreement": fidelity.top1_agreement,
            "mean_kl": fidelity.mean_kl}


def qat_row(model, calibrated, calib_images, training, batches, labels, fp_logits, config, name, bits) -> dict:
    """Train a calibrated model (QAT) and evaluate it: the row."""
    log.info("W%dA%d %s + QAT (%d steps of %d images) ...", bits, bits, name, config.steps, config.batch_size)
    trainer = QATTrainer(model, calibrated, training, config, calib_images, progress=True)
    trainer.run()
    result = trainer.finish()
    row = _evaluated_row(result.model, batches, labels, fp_logits, f"{name} + QAT")
    log.info("W%dA%d %s + QAT: top-1 %.2f %%, %.1f s", bits, bits, name, row["top1"], result.seconds)
    return {**row, "bits": bits, "calibration_seconds": calibrated.seconds, "reconstruction_seconds": None,
            "qat_seconds": result.seconds, "training": result.to_dict(), "qconfig": calibrated.qconfig.to_dict()}


def training_images(args: argparse.Namespace, data, model) -> FolderImages:
    """Every image of the folder that is not evaluated (``vitquant train``'s default)."""
    evaluated = {r.path.resolve() for r in data.evaluation}
    records = [r for r in list_images(data.calib_dir, split="train") if r.path.resolve() not in evaluated]
    return FolderImages(records, eval_transform(model))


def nonlinear_config(spec: str, bits: int, nonlinear_bits: int | None) -> NonlinearConfig | None:
    """``--nonlinear SPEC`` (``family`` or ``mixed:rule``) at W/A ``bits``; None for ``float``."""
    choice, _, rule = spec.partition(":")
    if choice == "float":
        return None
    return NonlinearConfig.everywhere(choice, nonlinear_bits, rule or "sqnr-diff")


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    fp = _accuracy(fp_logits, labels)
    settings = None if not args.recon_iters else ReconstructionConfig(
        images=args.recon_images, iters=args.recon_iters, batch_size=args.recon_batch_size,
        reg_weight=args.recon_reg_weight, weight_lr=args.recon_lr, act_lr=args.recon_act_lr, drop_prob=args.qdrop,
        ends=args.recon_ends, loss=args.recon_loss, seed=args.seed)
    qat = None
    if args.qat_steps:
        qat = TrainConfig(steps=args.qat_steps, batch_size=args.qat_batch_size, lr=args.qat_lr,
                          quant_lr=args.qat_quant_lr, dgd_weight=args.dgd_weight, kernels=args.qat_kernels, seed=args.seed)
        training = training_images(args, data, model)
    rows = [{"row": "FP32", "bits": None, "top1": fp.top1, "top5": fp.top5, "agreement": 100.0, "mean_kl": 0.0,
             "calibration_seconds": None, "reconstruction_seconds": None, "qconfig": None}]
    for bits in args.bits:
        for spec in args.rows:
            recipe, options = parse_row(spec)
            qconfig = build_qconfig(recipe, bits, bits, **options)
            nonlinear = nonlinear_config(args.nonlinear, bits, args.nonlinear_bits)
            if nonlinear is not None:
                qconfig = qconfig.with_nonlinear(nonlinear)
            row, calibrated = measure_row(model, calib_images, batches, labels, fp_logits, qconfig, spec, bits)
            rows.append({**row, "reconstruction_seconds": None})
            if settings is not None:
                rows.append(reconstruct_row(model, calibrated, calib_images, batches, labels, fp_logits, settings, spec, bits))
            if qat is not None:
                rows.append(qat_row(model, calibrated, calib_images, training, batches, labels, fp_logits, qat, spec, bits))
    return {
        "command": "python benchmarks/reconstruction.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source,
        "calibration_images": len(calib_images), "reconstruction_images": None if settings is None else settings.image_count(len(calib_images)),
        "reconstruction_images_are": "the calibration images (none of them is evaluated)",
        "evaluation_images": len(labels), "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed,
        "nonlinear": args.nonlinear, "nonlinear_bits": args.nonlinear_bits,
        "settings": None if settings is None else settings.to_dict(),
        "qat_settings": None if qat is None else qat.to_dict(),
        "qat_images": None if qat is None else len(training),
        "qat_images_are": "every image of the folder that is not evaluated (the calibration images among them)",
        **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    s = res["settings"]
    nonlinear = res.get("nonlinear", "float")
    kernels = "" if nonlinear == "float" else (
        f"integer non-linear kernels `{nonlinear}` (inputs on "
        f"{res['nonlinear_bits'] if res.get('nonlinear_bits') else 16} bits) and integer residual adds "
        "in every row (reconstruction trains with their float ops, QAT with the kernels "
        + ("in the loop" if (res.get("qat_settings") or {}).get("kernels") == "ste" else "as float ops") + "); ")
    recon = "no reconstruction" if s is None else (
        f"reconstructed on {res['reconstruction_images']} of those calibration images ({s['iters']} steps per block, "
        f"batch {s['batch_size']}, lr {s['weight_lr']:g} / activation steps {s['act_lr']:g}, λ {s['reg_weight']:g}, "
        f"QDrop {s['drop_prob']}" + (", Fisher-weighted error" if s.get("loss") == "fisher" else "")
        + (", patch embedding and head included" if s.get("ends") else ", blocks only") + ")")
    lines = [
        kernels + f"`{res['model']}`, calibrated on {res['calibration_images']} images (seed {res['seed']}), {recon}, "
        f"evaluated on {res['evaluation_images']} other images of `{Path(res['eval_dir']).name}`; "
        + ("" if not res.get("qat_settings") else
           f"QAT on the {res['qat_images']} images of the folder that are not evaluated ({res['qat_settings']['steps']} "
           f"steps of {res['qat_settings']['batch_size']} images, lr {res['qat_settings']['lr']:g} / quantizer steps "
           f"{res['qat_settings']['quant_lr']:g}, KD weight {res['qat_settings']['kd_weight']:g}, DGD weight "
           f"{res['qat_settings']['dgd_weight']:g}, IRM {'on' if res['qat_settings']['irm'] else 'off'}); ")
        + f"{res['threads']} CPU threads, torch {res['torch']}; "
        f"commit {str(res.get('commit'))[:10]}{' (uncommitted changes)' if res.get('dirty') else ''}.",
        "",
        "| W/A | recipe | top-1 % | top-5 % | agreement % | mean KL | calib s | recon s | QAT s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        bits = "FP32" if r["bits"] is None else f"W{r['bits']}A{r['bits']}"
        name = "-" if r["bits"] is None else r["row"]
        calib = "-" if r["calibration_seconds"] is None else f"{r['calibration_seconds']:.1f}"
        recon = "-" if r["reconstruction_seconds"] is None else f"{r['reconstruction_seconds']:.1f}"
        qat = "-" if r.get("qat_seconds") is None else f"{r['qat_seconds']:.1f}"
        lines.append(f"| {bits} | {name} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} | "
                     f"{r['mean_kl']:.4f} | {calib} | {recon} | {qat} |")
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.set_defaults(calib_size=128)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3], help="W/A bit widths (default 4 3)")
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    p.add_argument("--recon-images", type=int, help="default: every calibration image")
    p.add_argument("--recon-iters", type=int, default=ReconstructionConfig.iters, help="0: no reconstruction rows")
    p.add_argument("--recon-reg-weight", type=float, default=ReconstructionConfig.reg_weight,
                   help="λ of the AdaRound rounding regulariser")
    p.add_argument("--recon-batch-size", type=int, default=ReconstructionConfig.batch_size)
    p.add_argument("--recon-lr", type=float, default=ReconstructionConfig.weight_lr,
                   help="Adam learning rate of the rounding variables")
    p.add_argument("--recon-act-lr", type=float, default=ReconstructionConfig.act_lr,
                   help="Adam learning rate of the activation steps")
    p.add_argument("--qdrop", type=float, default=0.0)
    p.add_argument("--recon-loss", choices=LOSSES, default=ReconstructionConfig.loss,
                   help="mse, or fisher (BRECQ's Fisher-weighted squared error)")
    p.add_argument("--recon-ends", action=argparse.BooleanOptionalAction, default=ReconstructionConfig.ends,
                   help="also reconstruct the patch embedding and the head (default on)")
    p.add_argument("--qat-steps", type=int, default=0, help="QAT steps from the calibrated model (default 0: no QAT row)")
    p.add_argument("--qat-batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--qat-lr", type=float, default=TrainConfig.lr)
    p.add_argument("--qat-quant-lr", type=float, default=TrainConfig.quant_lr)
    p.add_argument("--dgd-weight", type=float, default=TrainConfig.dgd_weight)
    p.add_argument("--nonlinear", default="float", metavar="SPEC",
                   help="integer non-linear kernels in every row: ivit, ibert, fqvit, mixed:RULE (default float)")
    p.add_argument("--nonlinear-bits", type=int, metavar="N", help="kernel input bits (default: the bits, at least 6)")
    p.add_argument("--qat-kernels", choices=TRAIN_KERNELS, default=TrainConfig.kernels,
                   help=f"how the kernels run while QAT trains (default {TrainConfig.kernels})")
    p.add_argument("--stem", help="results file name without suffix (default reconstruction_<model>)")
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, args.stem or f"reconstruction_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
