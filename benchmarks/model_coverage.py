"""Which timm architectures quantize, and which convert to the integer program (random weights).

For every model: build the timm architecture as named (its depth, width, blocks and head) with random
weights, at a small input size where timm allows one (the cost grows with the tokens; the structure the
adapters and the converter see does not change), then

1. **quantize**: calibrate with the default recipe (``bitlog2-half-17``, W4A4, float non-linear ops:
   what ``vitquant quantize`` does) on a few random images and run the quantized model; then switch
   every quantization point off and check that the rewritten model computes timm's logits (a model the
   adapter rewrote wrongly, say without its LayerScale, would otherwise "work" silently);
2. **convert**: calibrate the same recipe with integer kernels (``--nonlinear ibert``), convert it to an
   integer program (``--save``) and run the program with the strict integer executor.

Each stage records ``ok`` or the error a user sees: ``vitquant: error: ...`` for vitquant's own errors
(what the command prints before exiting with status 2), otherwise the exception (a traceback: a bug).
Random weights say nothing about accuracy: only whether the stages run.

    python benchmarks/model_coverage.py                      # results/model_coverage.{json,md}
    python benchmarks/model_coverage.py --models deit3_small_patch16_224 --out /tmp/cov
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import timm
import torch

from vitquant.calibration import quantize_model
from vitquant.errors import VitQuantError
from vitquant.integer import IntegerModel, convert_model
from vitquant.nn.quant_point import Mode, set_mode
from vitquant.nonlinear import NonlinearConfig
from vitquant.paths import source_commit
from vitquant.recipes import build_qconfig

RESULTS = Path(__file__).parent / "results"
STEM = "model_coverage"
RECIPE, BITS, KERNELS = "bitlog2-half-17", 4, "ibert"
FLOAT_TOLERANCE = 1e-4  # the rewritten model in float mode against timm's: largest difference / largest logit

# (group, timm name, what it is, timm keyword arguments): the seven short names of `vitquant models`, then
# popular variants. ViT-style models run at 64x64 pixels (a few tokens per image); Swin at 128x128 with
# 4x4 windows (its stages 32, 16, 8, 4 tokens per side, every one a whole number of windows).
SMALL_VIT = {"img_size": 64}
SMALL_SWIN = {"img_size": 128, "window_size": 4}
MODELS = [
    ("seed", "vit_small_patch16_224", "ViT-S/16", SMALL_VIT),
    ("seed", "vit_base_patch16_224", "ViT-B/16", SMALL_VIT),
    ("seed", "deit_tiny_patch16_224", "DeiT-Tiny", SMALL_VIT),
    ("seed", "deit_small_patch16_224", "DeiT-Small", SMALL_VIT),
    ("seed", "deit_base_patch16_224", "DeiT-Base", SMALL_VIT),
    ("seed", "swin_tiny_patch4_window7_224", "Swin-T", SMALL_SWIN),
    ("seed", "swin_small_patch4_window7_224", "Swin-S", SMALL_SWIN),
    ("variant", "deit_tiny_distilled_patch16_224", "DeiT-Tiny distilled (distillation token and head)", SMALL_VIT),
    ("variant", "deit3_small_patch16_224", "DeiT-III Small (LayerScale)", SMALL_VIT),
    ("variant", "vit_small_patch14_dinov2", "DINOv2 ViT-S/14 (LayerScale)", {"img_size": 56}),
    ("variant", "vit_small_patch14_reg4_dinov2", "DINOv2 ViT-S/14 with 4 registers (LayerScale)", {"img_size": 56}),
    ("variant", "vit_base_patch32_clip_224", "CLIP ViT-B/32 (pre-norm)", SMALL_VIT),
    ("variant", "vit_base_patch32_clip_quickgelu_224", "CLIP ViT-B/32, OpenAI's QuickGELU", SMALL_VIT),
    ("variant", "vit_base_patch16_gap_224", "ViT-B/16 with global average pooling", SMALL_VIT),
    ("variant", "swinv2_tiny_window8_256", "Swin V2 Tiny", {"img_size": 128, "window_size": 4}),
    ("variant", "eva02_tiny_patch14_224", "EVA-02 Tiny", {"img_size": 56}),
    ("variant", "beit_base_patch16_224", "BEiT-B/16", SMALL_VIT),
]


class CheckFailed(Exception):
    """A stage ran without an error, but its result is wrong (what a user would not be told)."""


def user_error(exc: BaseException) -> str:
    """The line a user sees: the command's ``vitquant: error: ...`` or, for anything else, the exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, CheckFailed):
        return f"no error, but {text}"
    if isinstance(exc, VitQuantError):
        return f"vitquant: error: {text}"
    return f"{type(exc).__name__}: {text} (an uncaught exception: a traceback)"


def _stage(fn) -> tuple[dict, object]:
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - recording what fails is the point
        logging.getLogger(STEM).info("  failed: %s", user_error(exc))
        return {"status": "failed", "error": user_error(exc), "seconds": round(time.perf_counter() - start, 1)}, None
    return {"status": "ok", "seconds": round(time.perf_counter() - start, 1)}, value


def _finite_logits(logits: torch.Tensor, width: int) -> torch.Tensor:
    if logits.shape[-1] != width or not torch.isfinite(logits).all():
        raise CheckFailed(f"the outputs ({tuple(logits.shape)}) are not {width} finite values per image")
    return logits


def check_model(name: str, kwargs: dict, images: int, seed: int) -> dict:
    """Build ``name`` with random weights, then the quantize and convert stages."""
    log = logging.getLogger(STEM)
    log.info("%s %s", name, kwargs)
    torch.manual_seed(seed)
    row: dict = {"model": name, "kwargs": kwargs}
    build, model = _stage(lambda: timm.create_model(name, pretrained=False, **kwargs).eval())
    row["build"] = build
    if model is None:
        return row
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    size = (3, *timm.layers.to_2tuple(kwargs.get("img_size", size[-1])))
    row.update({"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                "input_size": list(size), "outputs": model.num_classes or model.num_features})
    x = torch.randn(images, *size)

    def quantize(nonlinear: str | None):
        qconfig = build_qconfig(RECIPE, w_bits=BITS, a_bits=BITS)
        if nonlinear is not None:
            qconfig = qconfig.with_nonlinear(NonlinearConfig.everywhere(nonlinear, bits=max(BITS, 6)))
        result = quantize_model(model, x, qconfig)
        with torch.no_grad():
            _finite_logits(result.model(x[:2]), row["outputs"])
        return result.model

    def quantize_and_check_float():
        qmodel = quantize(None)
        set_mode(qmodel, Mode.FLOAT)
        with torch.no_grad():
            want, got = model(x[:2]), qmodel(x[:2])
        error = ((got - want).abs().max() / want.abs().max()).item()
        row["float_mode_error"] = error
        if not error <= FLOAT_TOLERANCE:
            raise CheckFailed(f"with quantization off the rewritten model's outputs differ from timm's by "
                              f"{error:.2g} of the largest one")

    row["quantize"], _ = _stage(quantize_and_check_float)

    def convert():
        qmodel = quantize(KERNELS)
        program = convert_model(qmodel)
        _finite_logits(IntegerModel(program).run(x[:2]).to(torch.float64), row["outputs"])
        return len(program.ops)

    row["convert"], ops = _stage(convert)
    if ops is not None:
        row["convert"]["ops"] = ops
    return row


def _cell(stage: dict | None) -> str:
    if stage is None:
        return "-"
    return "works" if stage["status"] == "ok" else "fails"


def _first_error(row: dict) -> str:
    for key in ("build", "quantize", "convert"):
        stage = row.get(key)
        if stage and stage["status"] != "ok":
            return f"{key}: `{stage['error']}`".replace("|", "\\|")
    return ""


def to_markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [
        f"timm {res['timm']}, random weights (seed {cfg['seed']}), {cfg['images']} random calibration images per "
        f"model; quantize: `{cfg['recipe']}` W{cfg['bits']}A{cfg['bits']} (the default recipe); convert: the same "
        f"with `--nonlinear {cfg['kernels']}`, then the integer program run by the strict executor; "
        f"{res['threads']} CPU threads, torch {res['torch']}; commit {str(res['commit'])[:10]}"
        f"{' (uncommitted changes)' if res['dirty'] else ''}.",
        "",
        "| model | timm name | class | input | quantizes | converts | the error a user sees |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        size = "x".join(str(s) for s in row.get("input_size", [])[1:]) or "-"
        extra = {k: v for k, v in row["kwargs"].items() if k != "img_size"}
        if extra:
            size += ", " + ", ".join(f"{k} {v}" for k, v in extra.items())
        lines.append(f"| {row['label']} | `{row['model']}` | {row.get('class', '-')} | {size} | "
                     f"{_cell(row.get('quantize'))} | {_cell(row.get('convert'))} | {_first_error(row)} |")
    lines += ["", "Command: `python benchmarks/model_coverage.py`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="comma-separated timm names (default: the whole list)")
    p.add_argument("--images", type=int, default=4, help="random calibration images per model (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("vitquant").setLevel(logging.WARNING)
    wanted = None if args.models is None else set(args.models.split(","))
    models = [m for m in MODELS if wanted is None or m[1] in wanted]
    res = {
        "config": {"recipe": RECIPE, "bits": BITS, "kernels": KERNELS, "images": args.images, "seed": args.seed,
                   "command": " ".join(["python", "benchmarks/model_coverage.py", *(argv or sys.argv[1:])])},
        "timm": timm.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        **source_commit(), "rows": [],
    }
    start = time.perf_counter()
    for group, name, label, kwargs in models:
        row = check_model(name, kwargs, args.images, args.seed)
        res["rows"].append({"group": group, "label": label, **row})
    res["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{STEM}.json").write_text(json.dumps(res, indent=2))
    markdown = to_markdown(res)
    (args.out / f"{STEM}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
