"""Benchmark: calibration time of the default main job, as a multiple of one FP forward pass.

The job's model and its 32 calibration images (seed 0, the shared ImageNet sample, decoded once) are
calibrated ``--repeats`` times with the job's configuration (default: ``vitquant quantize``'s, W4A4
BitLog2 Half_17); one FP forward pass of the same images is timed in turns with it, so that both see the
same machine load. With ``--engines one-pass passes`` the consumer-by-consumer observation passes (what
every calibration ran before the one-pass forward) are timed in the same turns, and the two calibrated
models are checked to be identical. Writes ``results/calibration_<model>.{md,json}`` with the medians,
the stages of the fastest run, the commit and the configuration.

    python benchmarks/calibration.py                         # the README figure
    python benchmarks/calibration.py --engines one-pass passes --repeats 5
    python benchmarks/calibration.py --w-bits 8 --a-bits 8 --stem calibration_deit_tiny_w8a8
    python benchmarks/calibration.py --w-bits 8 --a-bits 8 --recipe repq-vit --attn-quant uniform --nonlinear mixed \
        --mixed-rule output-sqnr --repeats 1 --stem calibration_deit_tiny_w8a8_mixed_output_sqnr
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from attention_schemes import commit_note, environment, run_and_write
from vitquant.calibration import CalibrationResult, fingerprint_points, quantize_model
from vitquant.calibration.pipeline import _Fitter
from vitquant.data import load_batch
from vitquant.data.transforms import eval_transform
from vitquant.models import create_model, resolve_model_name
from vitquant.workflow import QuantizeJob, resolve_data

log = logging.getLogger("vitquant.benchmark")
ENGINES = ("one-pass", "passes")


@contextlib.contextmanager
def engine(name: str) -> Iterator[None]:
    """Within: calibration runs with ``name``'s engine (``passes``: never the one-pass forward)."""
    if name == "one-pass":
        yield
        return
    original = _Fitter.fits_in_one_pass
    _Fitter.fits_in_one_pass = lambda self: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        _Fitter.fits_in_one_pass = original  # type: ignore[method-assign]


def fp_seconds(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Seconds of one FP forward pass over ``images`` (one batch, as calibration sees them)."""
    with torch.inference_mode():
        start = time.perf_counter()
        model(images)
        return time.perf_counter() - start


def same_model(a: CalibrationResult, b: CalibrationResult) -> bool:
    """Whether two calibrations fitted the same quantizers with the same code histograms."""
    rows_a, rows_b = fingerprint_points(a.model), fingerprint_points(b.model)
    if [(n, c) for n, _, c in rows_a] != [(n, c) for n, _, c in rows_b]:
        return False
    for (_, qa, _), (_, qb, _) in zip(rows_a, rows_b):
        sa, sb = qa.state(), qb.state()
        if (sa.kind, sa.meta, sorted(sa.tensors)) != (sb.kind, sb.meta, sorted(sb.tensors)):
            return False
        if not all(torch.equal(sa.tensors[k], sb.tensors[k]) for k in sa.tensors):
            return False
    return True


def _stages(result: CalibrationResult) -> dict:
    return {"seconds": result.seconds, "passes": result.passes, "stage_seconds": result.stage_seconds,
            "activation_seconds": result.activation_seconds}


def run(args: argparse.Namespace) -> dict:
    job = QuantizeJob(model=args.model, weights=args.weights, w_bits=args.w_bits, a_bits=args.a_bits,
                      recipe=args.recipe, calib_data=args.data, calib_size=args.calib_size, seed=args.seed,
                      attn_quant=args.attn_quant, nonlinear=args.nonlinear, mixed_rule=args.mixed_rule, progress=False)
    job.validate()
    qconfig = job.qconfig()
    data = resolve_data(job)
    model, weights_source = create_model(job.model, job.weights)
    images = load_batch(data.calibration, eval_transform(model))
    fp_seconds(model, images)  # warm-up: first-call allocations
    fp: list[float] = []
    calib: dict[str, list[float]] = {e: [] for e in args.engines}
    best: dict[str, CalibrationResult] = {}
    for r in range(args.repeats):
        fp.append(fp_seconds(model, images))
        for name in args.engines:
            with engine(name):
                result = quantize_model(model, images, qconfig)
            calib[name].append(result.seconds)
            if name not in best or result.seconds < best[name].seconds:
                best[name] = result
        log.info("round %d: FP %.2f s, %s", r + 1, fp[-1], ", ".join(f"{e} {calib[e][-1]:.2f} s" for e in args.engines))
    fp_median = statistics.median(fp)
    rows = []
    for name in args.engines:
        median = statistics.median(calib[name])
        rows.append({"engine": name, "calibration_seconds_median": median, "calibration_seconds": calib[name],
                     "ratio_to_fp_median": median / fp_median, "fastest": _stages(best[name]),
                     "qconfig": best[name].qconfig.to_dict()})
    identical = same_model(best["one-pass"], best["passes"]) if set(args.engines) == set(ENGINES) else None
    return {
        "command": "python benchmarks/calibration.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(job.model), "weights": weights_source, "recipe": job.recipe,
        "w_bits": job.w_bits, "a_bits": job.a_bits, "nonlinear": job.nonlinear, "mixed_rule": job.mixed_rule,
        "calibration_images": int(images.shape[0]),
        "calib_dir": str(data.calib_dir), "seed": job.seed, "repeats": args.repeats,
        "qconfig": qconfig.to_dict(), "fp_seconds_median": fp_median, "fp_seconds": fp,
        "rows": rows, "same_model": identical, **environment(),
    }


def to_markdown(res: dict) -> str:
    mixed = res.get("nonlinear") == "mixed"  # its per-layer kernel choice and the recalibration after it
    lines = [
        f"Calibration of {res['model']} W{res['w_bits']}A{res['a_bits']} ({res['recipe']}, non-linear ops "
        f"{res.get('nonlinear', 'float')}{' (' + res['mixed_rule'] + ')' if res.get('nonlinear') == 'mixed' else ''}) on "
        f"{res['calibration_images']} images (seed {res['seed']}), median of {res['repeats']} runs timed in turns "
        f"with one FP forward pass of the same images ({res['fp_seconds_median']:.2f} s); {res['threads']} threads, "
        f"torch {res['torch']}, {commit_note(res)}.",
        "",
        "| engine | calibration s | x FP pass | passes | forward s | searches s | reparam s | level count s |"
        + (" kernel choice s | recalibration s |" if mixed else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if mixed else ""),
    ]
    for row in res["rows"]:
        f = row["fastest"]
        a, s = f["activation_seconds"], f["stage_seconds"]
        again = sum(v for k, v in s.items() if k.startswith("recalibration_"))
        lines.append(
            f"| {row['engine']} | {row['calibration_seconds_median']:.2f} | {row['ratio_to_fp_median']:.1f} | "
            f"{f['passes']} | {a.get('passes', 0):.2f} | {a.get('searches', 0):.2f} | "
            f"{s.get('reparameterization', 0):.2f} | {s.get('level_count', 0):.2f} |"
            + (f" {s.get('nonlinear_sensitivity', 0):.2f} | {again:.2f} |" if mixed else "")
        )
    lines.append("")
    lines.append("Stage columns: the fastest run. Calibration time excludes the level count (a further quantized "
                 "forward pass that counts the codes used).")
    if res["same_model"] is not None:
        lines.append(f"Both engines gave the same quantized model: {'yes' if res['same_model'] else 'NO'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--weights", type=Path)
    p.add_argument("--data", type=Path, help="image folder (default: the shared ImageNet sample)")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=int, default=4)
    p.add_argument("--recipe", default=QuantizeJob.recipe)
    p.add_argument("--attn-quant", help="the attention map's quantizer (default: the recipe's)")
    p.add_argument("--nonlinear", default="float", help="non-linear ops: float (default), ivit, ibert, fqvit, mixed")
    p.add_argument("--mixed-rule", default="sqnr-diff", choices=["sqnr-diff", "output-sqnr"])
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=["one-pass"])
    p.add_argument("--repeats", type=int, default=5, help="calibrations per engine (in turns with the FP pass)")
    p.add_argument("--stem", help="results file name (default calibration_<model>)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return run_and_write(args, run, to_markdown, args.stem or f"calibration_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
