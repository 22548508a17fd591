"""Benchmark: the quantized DeiT-Tiny as an integer program, run by the integer executor.

Per row: calibrate (same 32 images, seed 0), convert to an integer program, save it (``.vqm``), load it
back and evaluate on the same other images as the FP and simulated (fake-quant) models:

- top-1 of FP, simulated and integer models; top-1 agreement of the integer model with the simulated one;
- bit-identical images: integer logits (int64) against the program's float64 twin, and against the exact
  simulation of the calibrated model (:mod:`vitquant.integer.exact`: the same modules computing the
  program's requantizations, kernels and integer residual stream in float64), which should be all of them;
  the simulated (fake-quant) model itself keeps float32 and exact scale ratios, so its logits differ;
- file size against the FP safetensors; throughput on one batch, as ratios to FP timed in turns with
  it (best of ``--repeats``): the simulated model, the strict integer executor (``gemm int``, pure int64,
  one timed run), the fast executor (``gemm float``: exact int8 and float GEMMs, float64 rounding, the
  same integers) and the fast executor compiled by ``torch.compile`` (its compile time apart; both
  checked bit-identical to the strict executor on the timed batch).

Writes ``results/integer_<model>.{md,json}``.

    python benchmarks/integer.py                    # W8A8 and W4A4 rows, every evaluation image (968)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from attention_schemes import _accuracy, _logits, add_data_args, commit_note, environment, run_and_write
from recipes import load_eval
from vitquant.calibration import quantize_model
from vitquant.evaluation import FidelityMeter
from vitquant.integer import IntegerModel, load
from vitquant.integer.convert import plan_vit
from vitquant.integer.exact import Agreement, exact_integer_logits, exact_simulation
from vitquant.models import resolve_model_name
from vitquant.nonlinear import NonlinearConfig
from vitquant.paths import default_weights
from vitquant.recipes import build_qconfig

log = logging.getLogger("vitquant.benchmark")

#: row -> (recipe, W/A bits, build_qconfig options, non-linear choice, kernel input bits, rule); kernel input
#: bits None: the kernels' own widths (16-bit GELU/LayerNorm inputs, 16-bit I-ViT/I-BERT softmax output)
ROWS = {
    "W8A8": ("repq-vit", 8, {"attn_quant": "uniform"}, "mixed", None, "output-sqnr"),
    "W4A4": ("bitlog2-half-17", 4, {}, "mixed", None, "output-sqnr"),
}


def _in_turns(models: dict, batch: torch.Tensor, rounds: dict[str, int]) -> dict[str, float]:
    """Images/s of each model, best of ``rounds[name]`` runs, the models run in turns in every round (so
    that a change of load on the machine hits them alike); one untimed warm-up run each."""
    best = {}
    with torch.inference_mode():
        for fn in models.values():
            fn(batch)
        for r in range(max(rounds.values())):
            for name, fn in models.items():
                if r < rounds[name]:
                    t = time.perf_counter()
                    fn(batch)
                    best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    return {name: batch.shape[0] / seconds for name, seconds in best.items()}


def integer_against_simulations(qmodel: torch.nn.Module, plan, integer: IntegerModel,
                                batches: list[torch.Tensor]) -> tuple[torch.Tensor, int, Agreement]:
    """The integer program's logits (``ints · output scale``, float32) on every batch, how many images
    give bit-identical integer logits in the program's float64 twin, and how the exact simulation of
    ``qmodel`` agrees with them (``plan``: :func:`~vitquant.integer.convert.plan_vit` of it, ``integer``
    runs ``plan.program``)."""
    twin = IntegerModel(integer.program, backend="float")
    logits, identical_twin, exact = [], 0, Agreement(0, 0, 0, 0)
    with exact_simulation(qmodel, plan):
        for images in batches:
            ints = integer.run(images).double()
            identical_twin += int((twin.run(images) == ints).all(dim=-1).sum())
            exact = exact + Agreement.of(exact_integer_logits(qmodel, images, plan), ints)
            logits.append(ints * integer.program.output_scale)
    return torch.cat(logits).float(), identical_twin, exact


def measure(args, name, model, calib_images, batches, labels, fp_logits, fp_bytes: int) -> dict:
    recipe, bits, options, choice, nl_bits, rule = ROWS[name]
    qconfig = build_qconfig(recipe, bits, bits, **options).with_nonlinear(NonlinearConfig.everywhere(choice, nl_bits, rule))
    log.info("%s: calibrating ...", name)
    result = quantize_model(model, calib_images, qconfig)
    sim_logits, _ = _logits(result.model, batches)
    plan = plan_vit(result.model)
    program = plan.program
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.vqm"
        program.save(path)
        file_bytes = path.stat().st_size
        integer = load(path)
    log.info("%s: integer executor, its float64 twin and the exact simulation on %d images ...", name, len(labels))
    int_logits, identical, exact = integer_against_simulations(result.model, plan, integer, batches)
    sim, ints = _accuracy(sim_logits, labels), _accuracy(int_logits, labels)
    vs_sim, vs_fp = FidelityMeter(), FidelityMeter()
    vs_sim.update(sim_logits, int_logits)
    vs_fp.update(fp_logits, int_logits)
    batch = batches[0][: args.timing_batch]
    fast = IntegerModel(integer.program, gemm="float")
    compiled = IntegerModel(integer.program, gemm="float", compile=True)
    log.info("%s: compiling the fast executor ...", name)
    strict_ints = integer.run(batch)
    fast_identical = torch.equal(fast.run(batch), strict_ints) and torch.equal(compiled.run(batch), strict_ints)
    models = {"fp": model, "sim": result.model, "int": integer.run, "fast": fast.run, "compiled": compiled.run}
    speed = _in_turns(models, batch, {**{k: args.repeats for k in models}, "int": 1})
    row = {
        "row": name, "bits": bits, "recipe": recipe, "attention": result.qconfig.to_dict()["roles"]["post_softmax"]["name"],
        "nonlinear": result.nonlinear.to_dict()["counts"] if result.nonlinear else None,
        "sim_top1": sim.top1, "int_top1": ints.top1, "int_top5": ints.top5,
        "int_agreement_sim": vs_sim.top1_agreement, "int_agreement_fp": vs_fp.top1_agreement, "int_kl_fp": vs_fp.mean_kl,
        "bit_identical_twin": identical, "bit_identical_exact": exact.identical,
        "exact_within_one_lsb": exact.within_one, "exact_max_lsb": exact.max_lsb,
        "images": len(labels), "ops": len(program.ops),
        "file_bytes": file_bytes, "file_ratio_fp": file_bytes / fp_bytes,
        "speed_ratio": {"simulated": speed["sim"] / speed["fp"], "int_gemm_int": speed["int"] / speed["fp"],
                        "int_gemm_float": speed["fast"] / speed["fp"], "int_gemm_float_compiled": speed["compiled"] / speed["fp"]},
        "compile_seconds": compiled.compile_seconds, "fast_bit_identical_strict": fast_identical,
        "calibration_seconds": result.seconds, "qconfig": result.qconfig.to_dict(),
    }
    log.info("%s: FP-relative speeds %s; integer top-1 %.2f %% (simulated %.2f %%), %d/%d bit-identical to its twin, "
             "%d/%d to the exact simulation", name, row["speed_ratio"], ints.top1, sim.top1, identical, len(labels),
             exact.identical, len(labels))
    return row


def run(args: argparse.Namespace) -> dict:
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    weights = args.weights or default_weights(resolve_model_name(args.model))
    fp_bytes = Path(weights).stat().st_size
    fp = _accuracy(fp_logits, labels)
    rows = [measure(args, name, model, calib_images, batches, labels, fp_logits, fp_bytes) for name in args.rows]
    return {
        "command": "python benchmarks/integer.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source, "fp_top1": fp.top1, "fp_bytes": fp_bytes,
        "calibration_images": len(calib_images), "evaluation_images": len(labels),
        "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed, "timing_batch": args.timing_batch,
        "repeats": args.repeats,
        **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"`{res['model']}`, calibrated on {res['calibration_images']} images (seed {res['seed']}), evaluated on "
        f"{res['evaluation_images']} other images of `{Path(res['eval_dir']).name}`; FP top-1 {res['fp_top1']:.2f} %; "
        f"speeds on one batch of {res['timing_batch']} images, {res['threads']} CPU threads, torch {res['torch']}; "
        f"{commit_note(res)}.",
        "",
        "| row | attention | top-1 simulated % | top-1 integer % | agreement int/sim % | agreement int/FP % "
        "| bit-identical to twin | bit-identical to the exact simulation | file / FP | speed sim | speed int (strict) "
        "| speed int (fast) | speed int (fast, compiled) | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        s = r["speed_ratio"]
        exact = f"{r['bit_identical_exact']} / {r['images']}" if "bit_identical_exact" in r else "-"  # older results
        lines.append(
            f"| {r['row']} | {r['attention']} | {r['sim_top1']:.2f} | {r['int_top1']:.2f} | {r['int_agreement_sim']:.2f} | "
            f"{r['int_agreement_fp']:.2f} | {r['bit_identical_twin']} / {r['images']} | {exact} | {r['file_ratio_fp']:.2f} | "
            f"{s['simulated']:.2f}x | {s['int_gemm_int']:.3f}x | {s['int_gemm_float']:.3f}x | "
            f"{s['int_gemm_float_compiled']:.3f}x | {r['compile_seconds']:.0f} |"
        )
    identical = all(r["fast_bit_identical_strict"] for r in res["rows"])
    lines += [
        "",
        f"Speeds are images/s relative to the FP model, timed in turns with it in the same run (best of {res['repeats']}; "
        "the strict executor once). The fast executor, compiled or not, "
        + ("gave the strict executor's integers on the timed batch in every row" if identical else
           "DIFFERED from the strict executor on the timed batch")
        + "; compile s: its first, compiling, run (torch.compile, with the compile cache as found). Both rows: "
        "integer kernels chosen per layer (mixed, output-sqnr rule) at their own widths (16-bit GELU/LayerNorm "
        "inputs, 16-bit I-ViT/I-BERT softmax output). Bit-identical: integer logits equal on every "
        "class, against the program's float64 twin and against the calibrated model in its exact simulation "
        "(`vitquant.integer.exact`); top-1 simulated and agreement int/sim are the fake-quant model's.",
        "",
        f"Command: `{res['command'].strip()}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--timing-batch", type=int, default=16, help="images per timed batch (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per model (default 3)")
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, f"integer_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
