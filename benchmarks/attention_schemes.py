"""Benchmark: FP and the six post-softmax schemes at W4A4 on the same model, images and seed.

Writes a markdown table and a JSON file with, per scheme: top-1/top-5, top-1 agreement with FP, mean
KL(FP || quantized), calibration seconds (image decoding excluded), the number of attention levels
used, and quantized images/s relative to FP measured in this run on the same batch.

    python benchmarks/attention_schemes.py                 # real DeiT-Tiny, shared ImageNet sample
    python benchmarks/attention_schemes.py --eval-size 200 --schemes sqrt2-17 bitlog2-half-17
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from vitquant import __version__
from vitquant.calibration import quantize_model
from vitquant.data import load_batch, make_loader
from vitquant.data.transforms import eval_transform
from vitquant.evaluation import ClassificationMeter, FidelityMeter, compare_throughput
from vitquant.models import create_model, resolve_model_name
from vitquant.paths import source_commit
from vitquant.qconfig import ATTENTION_SCHEMES, POST_SOFTMAX, repq_vit_qconfig
from vitquant.workflow import QuantizeJob, resolve_data

log = logging.getLogger("vitquant.benchmark")


def _logits(model: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Logits of every batch and the summed forward seconds."""
    outs, seconds = [], 0.0
    with torch.inference_mode():
        for images in batches:
            t = time.perf_counter()
            outs.append(model(images))
            seconds += time.perf_counter() - t
    return torch.cat(outs), seconds


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Model, weights, images, calibration/evaluation sizes, seed, batch size and output folder: the
    options every benchmark takes."""
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--weights", type=Path)
    p.add_argument("--data", type=Path, help="image folder (default: the shared ImageNet sample)")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--eval-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")


def run_and_write(args: argparse.Namespace, run, to_markdown, stem: str) -> int:
    """Log at INFO, run the benchmark and write ``<out>/<stem>.{json,md}``."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    res = run(args)
    write_results(res, args.out, stem, to_markdown(res))
    return 0


def write_results(res: dict, out: Path, stem: str, markdown: str) -> None:
    """``<out>/<stem>.json`` (every figure) and ``<out>/<stem>.md`` (the table); prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


def provenance() -> dict:
    """The commit the figures come from (``dirty``: uncommitted changes were present)."""
    return source_commit()


def environment() -> dict:
    """Threads, machine, torch and vitquant versions and :func:`provenance` of a timing run."""
    return {
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "torch": torch.__version__, "vitquant": __version__, **provenance(),
    }


def commit_note(res: dict) -> str:
    """``commit <10 hex digits>``, with `` (uncommitted changes)`` when the tree was dirty."""
    return f"commit {str(res.get('commit'))[:10]}{' (uncommitted changes)' if res.get('dirty') else ''}"


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> ClassificationMeter:
    meter = ClassificationMeter()
    meter.update(logits, labels)
    return meter


def run(args: argparse.Namespace) -> dict:
    job = QuantizeJob(
        model=args.model, weights=args.weights, calib_data=args.data, eval_data=args.data,
        calib_size=args.calib_size, eval_size=args.eval_size, seed=args.seed,
    )
    model, weights_source = create_model(job.model, job.weights)
    transform = eval_transform(model)
    data = resolve_data(job)
    calib_images = load_batch(data.calibration, transform)
    batches, labels = [], []
    for images, target, _ in make_loader(data.evaluation, transform, args.batch_size):
        batches.append(images)
        labels.append(target)
    label_tensor = torch.cat(labels)
    timing_batch = batches[0][: args.timing_batch]
    log.info("%d calibration and %d evaluation images decoded", len(calib_images), len(label_tensor))

    fp_logits, fp_seconds = _logits(model, batches)
    fp_meter = _accuracy(fp_logits, label_tensor)
    rows = [{
        "scheme": "FP32", "top1": fp_meter.top1, "top5": fp_meter.top5, "agreement": 100.0, "mean_kl": 0.0,
        "calibration_seconds": None, "attention_levels": None, "images_per_second": len(label_tensor) / fp_seconds,
        "relative_throughput": 1.0,
    }]
    for scheme in args.schemes:
        log.info("scheme %s ...", scheme)
        qconfig = repq_vit_qconfig(args.w_bits, args.a_bits, scheme)
        result = quantize_model(model, calib_images, qconfig)
        q_logits, q_seconds = _logits(result.model, batches)
        meter = _accuracy(q_logits, label_tensor)
        fidelity = FidelityMeter()
        fidelity.update(fp_logits, q_logits)
        fp_ips, q_ips = compare_throughput([model, result.model], timing_batch, repeats=args.repeats)
        levels = result.role_summary(POST_SOFTMAX)
        rows.append({
            "scheme": scheme, "top1": meter.top1, "top5": meter.top5,
            "agreement": fidelity.top1_agreement, "mean_kl": fidelity.mean_kl,
            "calibration_seconds": result.seconds,
            "attention_levels": {"max": levels["max_levels"], "used_min": levels["levels_used_min"],
                                 "used_max": levels["levels_used_max"]},
            "images_per_second": len(label_tensor) / q_seconds,
            "relative_throughput": q_ips / fp_ips,
            "throughput_fp_images_per_second": fp_ips, "throughput_quantized_images_per_second": q_ips,
            "qconfig": qconfig.to_dict(),
        })
        log.info("%s: top-1 %.2f %%, agreement %.2f %%, calibration %.2f s, %.2fx FP throughput",
                 scheme, meter.top1, fidelity.top1_agreement, result.seconds, q_ips / fp_ips)
    return {
        "command": "python benchmarks/attention_schemes.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source,
        "w_bits": args.w_bits, "a_bits": args.a_bits,
        "calibration_images": len(calib_images), "calib_dir": str(data.calib_dir.resolve()),
        "evaluation_images": len(label_tensor), "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed,
        "timing_batch": len(timing_batch), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "torch": torch.__version__,
        "vitquant": __version__, **provenance(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"W{res['w_bits']}A{res['a_bits']} `{res['model']}`, calibrated on {res['calibration_images']} images "
        f"(seed {res['seed']}), evaluated on {res['evaluation_images']} other images of `{Path(res['eval_dir']).name}`; "
        f"{res['threads']} CPU threads, torch {res['torch']}; commit {str(res.get('commit'))[:10]}"
        f"{' (uncommitted changes)' if res.get('dirty') else ''}.",
        "",
        "| scheme | top-1 % | top-5 % | agreement % | mean KL | attn levels used (max) | calib s | speed vs FP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lv = r["attention_levels"]
        levels = "-" if lv is None else f"{lv['used_min']}-{lv['used_max']} ({lv['max']})"
        calib = "-" if r["calibration_seconds"] is None else f"{r['calibration_seconds']:.2f}"
        lines.append(
            f"| {r['scheme']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} | {r['mean_kl']:.4f} "
            f"| {levels} | {calib} | {r['relative_throughput']:.2f}x |"
        )
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=int, default=4)
    p.add_argument("--schemes", nargs="+", default=list(ATTENTION_SCHEMES))
    p.add_argument("--timing-batch", type=int, default=32, help="batch size of the throughput comparison")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (FP and quantized timed in turns)")
    args = p.parse_args(argv)
    return run_and_write(args, run, to_markdown, f"attention_schemes_{args.model}_w{args.w_bits}a{args.a_bits}")


if __name__ == "__main__":
    sys.exit(main())
