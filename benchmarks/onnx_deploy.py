"""Benchmark: the integer program exported to ONNX, in onnxruntime, against the FP model's ONNX graph.

Per row (W8A8: uniform attention map, I-BERT kernels; W4A4: BitLog2 Half_17, I-ViT kernels; both at
the kernels' own widths, every op integer): calibrate on 32 images (seed 0) or load a saved program (``--program ROW=FILE.vqm``),
export the ``integer`` ONNX graph, then

- bit-identical images: onnxruntime's ``logits_int`` against the strict int64 executor on every evaluation
  image (integer logits equal on every class), and onnxruntime's top-1;
- throughput at each ``--batches`` size, ``--threads`` threads, best of ``--repeats``, all models timed in
  turns in each round (a change of load on the machine hits them alike): onnxruntime on the integer graph,
  onnxruntime on the FP graph (the same timm model through ``torch.onnx.export``), vitquant's fast executor
  (``gemm float``, not compiled) and eager FP torch;
- file sizes: the FP ONNX file, the integer ONNX file and the ``.vqm``;
- OpenVINO (``--openvino``, when installed): whether it reads and compiles the integer graph, its speed
  and integer logits, or the error that stops it;
- QDQ (``--qdq``, W8A8 calibrated here): the ``qdq`` graph in onnxruntime, its top-1 and speed, against the
  simulated (fake-quantized) model with its integer kernels and with the float non-linear ops instead.

Writes ``results/onnx_<model>.{md,json}``. (Not named ``onnx.py``: run as a script from this folder, that
name would shadow the ``onnx`` package.)

    python benchmarks/onnx_deploy.py --eval-size 64 --program W8A8=w8a8.vqm --program W4A4=w4a4.vqm
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attention_schemes import _accuracy, add_data_args, commit_note, environment, run_and_write
from recipes import load_eval
from vitquant.calibration import quantize_model
from vitquant.integer import IntegerModel, IntegerProgram
from vitquant.integer.convert import convert_vit
from vitquant.integer.onnx_export import to_onnx
from vitquant.models import resolve_model_name
from vitquant.nonlinear import NonlinearConfig
from vitquant.recipes import build_qconfig

log = logging.getLogger("vitquant.benchmark")

ROWS = {  # (recipe, bits, options, kernel family, kernel input bits: None = the kernels' own widths)
    "W8A8": ("repq-vit", 8, {"attn_quant": "uniform"}, "ibert", None),
    "W4A4": ("bitlog2-half-17", 4, {}, "ivit", None),
}


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_turns(models: dict, batch: torch.Tensor, repeats: int) -> dict[str, float]:
    """Images/s of each model on ``batch``: best of ``repeats`` runs in turns, after one untimed run each."""
    best = {}
    with torch.inference_mode():
        for fn in models.values():
            fn(batch)
        for _ in range(repeats):
            for name, fn in models.items():
                start = time.perf_counter()
                fn(batch)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return {name: batch.shape[0] / seconds for name, seconds in best.items()}


def fp_onnx(model: torch.nn.Module, path: Path, size: int) -> None:
    """The FP model through torch.onnx.export (the TorchScript exporter, opset 18, free batch)."""
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=18, dynamo=False)


def program_for(args, name: str, model: torch.nn.Module, calib_images: torch.Tensor):
    """(program, where it comes from, the calibrated model or None)."""
    if name in args.program:
        return IntegerProgram.load(args.program[name]), str(args.program[name]), None
    recipe, bits, options, family, nl_bits = ROWS[name]
    qconfig = build_qconfig(recipe, bits, bits, **options).with_nonlinear(NonlinearConfig.everywhere(family, nl_bits))
    log.info("%s: calibrating ...", name)
    qmodel = quantize_model(model, calib_images, qconfig).model
    return convert_vit(qmodel), "calibrated here", qmodel


def simulated_logits(qmodel: torch.nn.Module, batches: list[torch.Tensor], float_nonlinear: bool) -> torch.Tensor:
    """The fake-quantized model's logits, with its integer kernels or (``float_nonlinear``) the float ops."""
    from vitquant.nn.nonlinear import QuantNonLinear

    modules = [m for m in qmodel.modules() if isinstance(m, QuantNonLinear)]
    active = [m.active for m in modules]
    try:
        if float_nonlinear:
            for m in modules:
                m.activate(None)
        with torch.inference_mode():
            return torch.cat([qmodel(images) for images in batches])
    finally:
        for m, family in zip(modules, active):
            m.activate(family)


def openvino_row(path: Path, batch: np.ndarray, threads: int, expected: np.ndarray) -> dict:
    """OpenVINO on the integer graph: compiled and run, or the first line of the error that stops it."""
    try:
        import openvino as ov
    except ImportError:
        return {"status": "not installed"}
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": threads})
        out = compiled(batch)
        logits = out[compiled.output("logits_int")]
        start = time.perf_counter()
        compiled(batch)
        return {"status": "ok", "version": ov.get_version(), "images_per_second": len(batch) / (time.perf_counter() - start),
                "bit_identical_images": int((logits == expected).all(axis=-1).sum()), "images": len(batch)}
    except Exception as exc:  # noqa: BLE001 - report what stops it
        lines = [line.strip() for line in str(exc).splitlines()]
        message = " ".join(line for line in lines if line and not line.startswith("Exception from"))
        return {"status": "failed", "version": ov.get_version(), "error": message[:400]}


def measure(args, name: str, model, calib_images, batches, labels, fp_path: Path, tmp: Path) -> dict:
    program, source, qmodel = program_for(args, name, model, calib_images)
    vqm = tmp / f"{name}.vqm"
    program.save(vqm)
    start = time.perf_counter()
    onnx_path = to_onnx(program, tmp / f"{name}.onnx", image_size=int(batches[0].shape[-1]))
    export_seconds = time.perf_counter() - start
    integer = session(onnx_path, args.threads)
    strict = IntegerModel(program)
    log.info("%s: onnxruntime and the strict executor on %d images ...", name, len(labels))
    identical, logits = 0, []
    for images in batches:
        ints = torch.from_numpy(integer.run(["logits_int"], {"image": images.numpy()})[0])
        identical += int((ints == strict.run(images)).all(dim=-1).sum())
        logits.append(ints.double() * program.output_scale)
    accuracy = _accuracy(torch.cat(logits).float(), labels)
    fp = session(fp_path, args.threads)
    fast = IntegerModel(program, gemm="float")
    qdq = None
    if args.qdq and qmodel is not None and name == "W8A8":
        qdq_path = to_onnx(program, tmp / f"{name}_qdq.onnx", format="qdq", image_size=int(batches[0].shape[-1]))
        qdq = session(qdq_path, args.threads)
        qdq_logits = torch.cat([torch.from_numpy(qdq.run(None, {"image": b.numpy()})[0]) for b in batches])
        sim, sim_float = simulated_logits(qmodel, batches, False), simulated_logits(qmodel, batches, True)
        agree = lambda a, b: 100.0 * (a.argmax(-1) == b.argmax(-1)).double().mean().item()  # noqa: E731
        qdq_row = {"top1": _accuracy(qdq_logits, labels).top1, "onnx_bytes": qdq_path.stat().st_size,
                   "simulated_top1": _accuracy(sim, labels).top1, "simulated_float_nonlinear_top1": _accuracy(sim_float, labels).top1,
                   "agreement_simulated": agree(qdq_logits, sim), "agreement_simulated_float_nonlinear": agree(qdq_logits, sim_float),
                   "agreement_program": agree(qdq_logits, torch.cat(logits))}
    speed = {}
    for size in args.batches:
        batch = torch.cat(batches)[:size]
        models = {
            "onnxruntime integer": lambda x: integer.run(["logits_int"], {"image": x.numpy()}),
            "onnxruntime FP": lambda x: fp.run(None, {"image": x.numpy()}),
            "vitquant fast executor": fast.run,
            "torch FP (eager)": model,
        }
        if qdq is not None:
            models["onnxruntime QDQ"] = lambda x: qdq.run(None, {"image": x.numpy()})
        log.info("%s: timing at batch %d ...", name, size)
        speed[str(size)] = in_turns(models, batch, args.repeats)
    row = {
        "row": name, "program": source, "ops": len(program.ops), "images": len(labels),
        "bit_identical_images": identical, "onnx_top1": accuracy.top1, "onnx_top5": accuracy.top5,
        "export_seconds": export_seconds, "onnx_bytes": onnx_path.stat().st_size, "vqm_bytes": vqm.stat().st_size,
        "speed": speed, "info": {k: v for k, v in program.info.items() if k != "qconfig"},
    }
    if qdq is not None:
        row["qdq"] = qdq_row
    if args.openvino:
        batch = torch.cat(batches)[: max(args.batches)]
        row["openvino"] = openvino_row(onnx_path, batch.numpy(), args.threads,
                                       strict.run(batch).numpy() if identical == len(labels) else None)
    log.info("%s: %d/%d bit-identical, speeds %s", name, identical, len(labels), speed)
    return row


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, weights_source, data, calib_images, batches, labels, fp_logits = load_eval(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp_path = tmp / "fp.onnx"
        fp_onnx(model, fp_path, int(batches[0].shape[-1]))
        fp_bytes = fp_path.stat().st_size
        rows = [measure(args, name, model, calib_images, batches, labels, fp_path, tmp) for name in args.rows]
    import onnxruntime

    return {
        "command": "python benchmarks/onnx_deploy.py " + " ".join(sys.argv[1:]),
        "model": resolve_model_name(args.model), "weights": weights_source, "fp_top1": _accuracy(fp_logits, labels).top1,
        "fp_onnx_bytes": fp_bytes, "calibration_images": len(calib_images), "evaluation_images": len(labels),
        "eval_dir": str(data.eval_dir.resolve()), "seed": args.seed, "batches": args.batches, "repeats": args.repeats,
        "onnxruntime": onnxruntime.__version__, "load_average": os.getloadavg(),
        **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    load = ", ".join(f"{v:.1f}" for v in res["load_average"])
    lines = [
        f"`{res['model']}`; bit-identical images and top-1 on {res['evaluation_images']} images of "
        f"`{Path(res['eval_dir']).name}` drawn (seed {res['seed']}) from those not calibrated on (FP top-1 "
        f"{res['fp_top1']:.2f} %); speeds in images/s, {res['threads']} threads, best of {res['repeats']} in turns; "
        f"onnxruntime {res['onnxruntime']}, torch {res['torch']}; load average at the end {load}; {commit_note(res)}.",
        "",
        "| row | bit-identical (ORT vs strict) | ORT top-1 % | batch | ORT integer | ORT FP | integer / FP | "
        "vitquant fast | torch FP | integer ONNX MB | FP ONNX MB | .vqm MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        for size, s in r["speed"].items():
            ratio = s["onnxruntime integer"] / s["onnxruntime FP"]
            lines.append(
                f"| {r['row']} | {r['bit_identical_images']} / {r['images']} | {r['onnx_top1']:.2f} | {size} | "
                f"{s['onnxruntime integer']:.1f} | {s['onnxruntime FP']:.1f} | {ratio:.2f}x | "
                f"{s['vitquant fast executor']:.1f} | {s['torch FP (eager)']:.1f} | {r['onnx_bytes'] / 1e6:.2f} | "
                f"{res['fp_onnx_bytes'] / 1e6:.2f} | {r['vqm_bytes'] / 1e6:.2f} |"
            )
    for r in res["rows"]:
        ov = r.get("openvino")
        if ov:
            text = (f"reads and runs it: {ov['images_per_second']:.1f} images/s (one run of batch {ov['images']}), "
                    f"{ov['bit_identical_images']} / {ov['images']} bit-identical"
                    if ov["status"] == "ok" else f"{ov['status']}: {ov.get('error', '')}")
            lines.append(f"\nOpenVINO {ov.get('version', '')} on the {r['row']} integer graph: {text}")
    for r in res["rows"]:
        q = r.get("qdq")
        if q:
            speeds = ", ".join(f"batch {size}: {s['onnxruntime QDQ']:.1f} images/s" for size, s in r["speed"].items())
            lines += ["", f"QDQ graph of the {r['row']} program in onnxruntime: top-1 {q['top1']:.2f} % against the simulated "
                      f"model's {q['simulated_top1']:.2f} % (integer kernels) and {q['simulated_float_nonlinear_top1']:.2f} % "
                      f"(float non-linear ops); top-1 agreement {q['agreement_simulated']:.2f} % and "
                      f"{q['agreement_simulated_float_nonlinear']:.2f} % with them, {q['agreement_program']:.2f} % with the "
                      f"integer program; {q['onnx_bytes'] / 1e6:.2f} MB; {speeds}."]
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def _program_arg(text: str) -> tuple[str, Path]:
    name, _, path = text.partition("=")
    if name not in ROWS or not path:
        raise argparse.ArgumentTypeError(f"--program ROW=FILE.vqm with ROW one of {', '.join(ROWS)}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.set_defaults(eval_size=64, batch_size=32)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--program", type=_program_arg, action="append", default=[],
                   help="ROW=FILE.vqm: a saved program for the row (calibrated as the row says) instead of calibrating")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="timed batch sizes (default 1 32)")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model and batch (default 3)")
    p.add_argument("--openvino", action="store_true", help="also try OpenVINO on the integer graph")
    p.add_argument("--qdq", action="store_true", help="also the QDQ graph of the W8A8 row (calibrated here)")
    args = p.parse_args(argv)
    args.program = dict(args.program)
    return run_and_write(args, run, to_markdown, f"onnx_{args.model}")


if __name__ == "__main__":
    sys.exit(main())
