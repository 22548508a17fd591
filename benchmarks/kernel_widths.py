"""Benchmark: the integer program's accuracy at the kernels' old and new widths (real DeiT-Tiny).

Per row: calibrate (32 images, seed 0) with every op integer (kernels of one family, integer residual
adds), convert to the integer program, run it with the fast executor (the strict executor's integers,
tested bit for bit) on every evaluation image, and compare with the same recipe with float non-linear
ops ("float kernels"). Widths: ``old`` is the previous default (8-bit softmax output, GELU/LayerNorm
inputs re-quantized to max(bits, 6) bits, one asymmetric step per tensor); ``new`` the kernels' own
widths (16-bit I-ViT/I-BERT softmax output, 16-bit GELU/LayerNorm inputs from the accumulator and the
residual stream). On the first ``--identity-images`` images the program's integers are also checked
against the strict int64 executor and the exact simulation of the calibrated model.

    python benchmarks/kernel_widths.py                 # all evaluation images (968)
    python benchmarks/kernel_widths.py --old-families ivit ibert   # the old widths for two families only

Writes ``results/kernel_widths_<model>[_<tag>].{md,json}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace

import torch

from attention_schemes import _accuracy, _logits, add_data_args, commit_note, environment, run_and_write
from recipes import load_eval
from vitquant.calibration import quantize_model
from vitquant.errors import VitQuantError
from vitquant.evaluation import FidelityMeter
from vitquant.integer import IntegerModel
from vitquant.integer.convert import plan_vit
from vitquant.integer.exact import exact_integer_logits, exact_simulation
from vitquant.models import resolve_model_name
from vitquant.nonlinear import NonlinearConfig
from vitquant.recipes import build_qconfig

log = logging.getLogger("vitquant.benchmark")

#: bits -> (recipe, build_qconfig options)
RECIPES = {8: ("repq-vit", {"attn_quant": "uniform"}), 6: ("bitlog2-half-17", {}), 4: ("bitlog2-half-17", {})}
FAMILIES = ["ivit", "ibert", "fqvit", "mixed:sqnr-diff", "mixed:output-sqnr"]
WIDTHS = {  # (kernel input bits, softmax output bits)
    "old": lambda bits: (max(bits, 6), 8),
    "new": lambda bits: (None, None),
    "softmax8": lambda bits: (None, 8),  # the new input widths, an 8-bit softmax output (I-BERT's published width)
}


#: FQ-ViT has no GELU kernel (the paper keeps GELU in float): its rows take I-BERT's integer GELU
GELU_FOR_FQVIT = "ibert"


def nonlinear(family: str, width: str, bits: int) -> NonlinearConfig:
    choice, _, rule = family.partition(":")
    nl_bits, softmax_bits = WIDTHS[width](bits)
    config = NonlinearConfig.everywhere(choice, nl_bits, rule or "sqnr-diff", softmax_bits=softmax_bits)
    if choice == "fqvit":
        config = replace(config, ops={**config.ops, "gelu": GELU_FOR_FQVIT})
    return config


def measure(model, calib_images, batches, labels, fp_logits, bits: int, family: str, width: str,
            identity_images: int, float_logits: torch.Tensor | None, search: str | None = None,
            recipe: str | None = None) -> dict:
    default_recipe, options = RECIPES[bits]
    if recipe is None or recipe == default_recipe:
        recipe = default_recipe
    else:
        options = {}
    qconfig = build_qconfig(recipe, bits, bits, search=search, **options)
    if family != "float":
        qconfig = qconfig.with_nonlinear(nonlinear(family, width, bits))
    t = time.perf_counter()
    result = quantize_model(model, calib_images, qconfig)
    calib_seconds = time.perf_counter() - t
    sim_logits, _ = _logits(result.model, batches)
    sim = _accuracy(sim_logits, labels)
    row = {"bits": bits, "recipe": recipe, "family": family, "width": width, "calibration_seconds": calib_seconds,
           "sim_top1": sim.top1, "qconfig": result.qconfig.to_dict()}
    sim_fp = FidelityMeter()
    sim_fp.update(fp_logits, sim_logits)
    row.update(sim_agreement_fp=sim_fp.top1_agreement, sim_kl_fp=sim_fp.mean_kl)
    if family == "float":
        log.info("W%dA%d float kernels: simulated %.2f %%", bits, bits, sim.top1)
        return row | {"logits": sim_logits}
    plan = plan_vit(result.model)
    fast = IntegerModel(plan.program, gemm="float")
    with torch.inference_mode():
        ints = [fast.run(images) for images in batches]
    int_logits = torch.cat(ints).double().mul(plan.program.output_scale).float()
    acc = _accuracy(int_logits, labels)
    vs_sim, vs_fp = FidelityMeter(), FidelityMeter()
    vs_sim.update(sim_logits, int_logits)
    vs_fp.update(fp_logits, int_logits)
    strict = IntegerModel(plan.program)
    first = torch.cat(batches)[:identity_images]
    with torch.inference_mode():
        strict_ints = strict.run(first)
        fast_ints = torch.cat(ints)[:identity_images]
        with exact_simulation(result.model, plan):
            exact_ints = exact_integer_logits(result.model, first, plan)
    row.update(
        int_top1=acc.top1, int_top5=acc.top5, int_agreement_sim=vs_sim.top1_agreement,
        int_agreement_fp=vs_fp.top1_agreement, int_kl_fp=vs_fp.mean_kl,
        counts=result.nonlinear.to_dict()["counts"] if result.nonlinear else None,
        identity_images=identity_images,
        fast_identical_strict=int((fast_ints == strict_ints).all(dim=-1).sum()),
        exact_identical_strict=int((exact_ints.to(strict_ints.dtype) == strict_ints).all(dim=-1).sum()),
    )
    if float_logits is not None:
        row["int_top1_minus_float_kernels"] = acc.top1 - _accuracy(float_logits, labels).top1
    log.info("W%dA%d %s %s: integer %.2f %% (simulated %.2f %%), agreement int/sim %.1f %%, int/FP %.1f %%; "
             "%d/%d fast = strict, %d/%d exact = strict", bits, bits, family, width, acc.top1, sim.top1,
             vs_sim.top1_agreement, vs_fp.top1_agreement, row["fast_identical_strict"], identity_images,
             row["exact_identical_strict"], identity_images)
    return row


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    fp = _accuracy(fp_logits, labels)
    rows = []
    for bits in args.bits:
        ref = measure(model, calib_images, batches, labels, fp_logits, bits, "float", "-", 0, None, args.search,
                      args.recipe)
        float_logits = ref.pop("logits")
        rows.append(ref)
        for family in args.families:
            for width in args.widths:
                if width == "old" and args.old_families is not None and family not in args.old_families:
                    continue
                if width == "softmax8" and family not in args.softmax8_families:
                    continue
                try:
                    rows.append(measure(model, calib_images, batches, labels, fp_logits, bits, family, width,
                                        args.identity_images, float_logits, args.search, args.recipe))
                except VitQuantError as exc:  # one row that cannot run does not cost the others
                    log.error("W%dA%d %s %s: %s", bits, bits, family, width, exc)
                    rows.append({"bits": bits, "recipe": args.recipe or RECIPES[bits][0], "family": family,
                                 "width": width, "error": str(exc)})
    return {
        "command": "python benchmarks/kernel_widths.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source, "fp_top1": fp.top1,
        "calibration_images": len(calib_images), "evaluation_images": len(labels),
        "seed": args.seed, "search": args.search, **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"`{res['model']}`, calibrated on {res['calibration_images']} images (seed {res['seed']}), evaluated on "
        f"{res['evaluation_images']} other images; FP top-1 {res['fp_top1']:.2f} %; activation search "
        f"{res.get('search') or 'as the recipe'}; {commit_note(res)}.",
        "",
        "| W/A | recipe | kernels | widths | top-1 simulated % | top-1 integer % | integer - float kernels | agreement int/sim % "
        "| agreement int/FP % | KL int/FP | fast = strict | exact = strict |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        if r["family"] == "float":
            lines.append(f"| W{r['bits']}A{r['bits']} | {r['recipe']} | float | - | {r['sim_top1']:.2f} | - | - | - | "
                         f"{r['sim_agreement_fp']:.2f} | {r['sim_kl_fp']:.3f} | - | - |")
            continue
        if "error" in r:
            lines.append(f"| W{r['bits']}A{r['bits']} | {r['recipe']} | {r['family']} | {r['width']} | "
                         f"error: {r['error']} |" + " - |" * 8)
            continue
        n = r["identity_images"]
        lines.append(
            f"| W{r['bits']}A{r['bits']} | {r['recipe']} | {r['family']} | {r['width']} | {r['sim_top1']:.2f} | {r['int_top1']:.2f} | "
            f"{r['int_top1_minus_float_kernels']:+.2f} | {r['int_agreement_sim']:.2f} | {r['int_agreement_fp']:.2f} | "
            f"{r['int_kl_fp']:.3f} | {r['fast_identical_strict']} / {n} | {r['exact_identical_strict']} / {n} |")
    lines += [
        "",
        "Widths: `old` = 8-bit softmax output, GELU/LayerNorm inputs re-quantized to max(bits, 6) bits (the previous "
        "default); `new` = 16-bit I-ViT/I-BERT softmax output (FQ-ViT: its 4-bit log2 codes either way), 16-bit "
        "GELU/LayerNorm inputs; `softmax8` = the new input widths with an 8-bit I-ViT/I-BERT softmax output (FQ-ViT's log2 codes are 4 bits at most, so it has no such row). Integer top-1 is the program's (fast executor); `float` rows are the same recipe with "
        "float non-linear ops and float residual adds (their agreement/KL columns are the simulated model's against FP). "
        "fast = strict / exact = strict: images whose integer logits are equal on every class. FQ-ViT has no GELU "
        f"kernel (the paper keeps GELU in float): its rows take {GELU_FOR_FQVIT}'s integer GELU.",
        "",
        f"Command: `{res['command'].strip()}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--bits", nargs="+", type=int, default=[8, 4], choices=sorted(RECIPES))
    p.add_argument("--families", nargs="+", default=FAMILIES)
    p.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=list(WIDTHS))
    p.add_argument("--old-families", nargs="+", help="families measured at the old widths too (default: all)")
    p.add_argument("--softmax8-families", nargs="+", default=["ivit", "ibert"],
                   help="families measured at the softmax8 widths, when --widths names them (default: ivit ibert)")
    p.add_argument("--identity-images", type=int, default=16, help="images checked against the strict executor")
    p.add_argument("--recipe", help="recipe of every row (default: repq-vit with uniform attention at 8 bits, "
                   "bitlog2-half-17 below)")
    p.add_argument("--tag", help="suffix of the results files' names (kernel_widths_<model>_<tag>)")
    p.add_argument("--search", help="activation search of every row (default: the recipe's; percentile: data-only, fast)")
    args = p.parse_args(argv)
    tag = f"_{args.tag}" if args.tag else ""
    return run_and_write(args, run, to_markdown, f"kernel_widths_{args.model}{tag}")


if __name__ == "__main__":
    sys.exit(main())
