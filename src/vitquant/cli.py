"""Command line: ``vitquant quantize ...``, ``vitquant train ...`` and the others, and the seed-compatible
``vitquant --model ... --log_quant_scheme ...``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from vitquant import __version__
from vitquant.errors import ConfigError, VitQuantError

log = logging.getLogger("vitquant")

_SEED_FLAGS = frozenset(
    {"--model", "--dataset", "--w_bit", "--w_bits", "--a_bit", "--a_bits", "--log_quant_scheme",
     "--calib_batchsize", "--val_batchsize", "--num_workers"}
)  # flags of the original scripts: their presence without a subcommand selects the seed form


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    from vitquant.qconfig import ATTENTION_SCHEMES, OTHER_ATTENTION_QUANTIZERS
    from vitquant.recipes import POST_GELU_QUANTIZERS, recipe_names
    from vitquant.nonlinear.config import CHOICES as NONLINEAR_CHOICES, RULES
    from vitquant.search.registry import METRIC_NAMES, SEARCHES

    g = p.add_argument_group("model")
    g.add_argument("--model", default="deit_tiny", metavar="NAME", help="short name (deit_tiny, vit_small, swin_tiny, ...) or timm name")
    g.add_argument("--weights", type=Path, metavar="PATH", help="state dict (.safetensors or .pth); default: shared copy, else timm download")
    g = p.add_argument_group("quantization")
    g.add_argument("--w-bits", type=int, metavar="N", default=4, help="weight bits, 2..8 (default 4)")
    g.add_argument("--a-bits", type=int, metavar="N", default=4, help="activation bits, 2..8 (default 4)")
    g.add_argument(
        "--recipe",
        default="bitlog2-half-17",
        metavar="NAME",
        help=f"quantization recipe: {', '.join(recipe_names())} (default bitlog2-half-17; 'vitquant recipes' lists them)",
    )
    g.add_argument(
        "--attn-quant",
        metavar="NAME",
        help=f"replace the recipe's post-softmax quantizer: {', '.join(ATTENTION_SCHEMES + OTHER_ATTENTION_QUANTIZERS)} "
        "(seed spellings such as BitLog2_Half_17 work too)",
    )
    g.add_argument("--attn-bits", type=int, metavar="N", help="bits of the attention-map quantizer (default: --a-bits)")
    g.add_argument("--ends-bits", type=int, metavar="N",
                   help="bits of the patch-embedding weight and the classifier head's weight and input "
                        "(default: --w-bits / --a-bits like every layer; bitlog2-recon keeps them at 8 below 4 bits)")
    g.add_argument("--post-gelu", metavar="NAME", help=f"replace the recipe's post-GELU quantizer: {', '.join(POST_GELU_QUANTIZERS)}")
    g.add_argument("--search", metavar="NAME", help=f"search of every activation point: {', '.join(SEARCHES)}")
    g.add_argument("--metric", metavar="NAME", help=f"metric of the searches: {', '.join(METRIC_NAMES)}")
    g.add_argument(
        "--nonlinear", default="float", metavar="NAME",
        help=f"kernels of Softmax, GELU and LayerNorm: {', '.join(NONLINEAR_CHOICES)} (default float: the exact ops; "
        "mixed: each layer picks a family by SQNR)",
    )
    g.add_argument("--mixed-rule", default="sqnr-diff", metavar="RULE", help=f"rule of --nonlinear mixed: {', '.join(RULES)} (default sqnr-diff)")
    g.add_argument("--nonlinear-bits", type=int, metavar="N",
                   help="cap the GELU/LayerNorm kernels' integer inputs at N bits, 2..16, for hardware that needs it "
                        "(default: 16, the kernels' own input width: GELU takes fc1's accumulator and LayerNorm the "
                        "residual stream, narrowed only to that; softmax kernels take the q@kᵀ integer product)")
    g.add_argument("--softmax-bits", type=int, metavar="N",
                   help="output width of the I-ViT/I-BERT softmax kernels, 2..16 (default 16, as the published "
                        "I-ViT; FQ-ViT's Log-Int-Softmax keeps its 4-bit log2 codes)")
    _add_data_args(p)
    _add_reconstruction_args(p)
    g = p.add_argument_group("compensation and rotation")
    g.add_argument("--compensate", metavar="METHOD",
                   help="after calibration (and reconstruction), fit a per-block correction on the calibration "
                        "images: qwt (QwT: a quantized linear map of each block's input, by least squares, no "
                        "gradient steps), or none (default: as the recipe says)")
    g.add_argument("--rotate", default="none", metavar="METHOD",
                   help="before calibration, rotate the FP model's residual stream (the same function; its outlier "
                        "channels spread over all channels): hadamard (a randomised Hadamard rotation), orthogonal "
                        "(a seeded random one) or none (default; ViT/DeiT only)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to this file")
    g.add_argument("--save", type=Path, metavar="FILE", help="also write the integer program (.vqm) for 'vitquant run'")
    g.add_argument("--levels", action="store_true", help="print every quantization point with its levels")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_reconstruction_args(p: argparse.ArgumentParser) -> None:
    from vitquant.reconstruction import ReconstructionConfig
    from vitquant.reconstruction.config import LOSSES

    g = p.add_argument_group("reconstruction (after calibration, on the calibration images)")
    g.add_argument("--reconstruct", action=argparse.BooleanOptionalAction,
                   help="block reconstruction (BRECQ/QDrop): per block, learn the weights' rounding (AdaRound) and the "
                   "uniform activation steps (LSQ) against the FP block's output (default: as the recipe says; "
                   "bitlog2-recon reconstructs)")
    g.add_argument("--recon-images", type=int, metavar="N", help="images to reconstruct on (default: every calibration image, up to 1024; at most --calib-size)")
    g.add_argument("--recon-iters", type=int, metavar="K", help=f"steps per block (default {ReconstructionConfig.iters})")
    g.add_argument("--recon-batch-size", type=int, metavar="B", help=f"images per step (default {ReconstructionConfig.batch_size})")
    g.add_argument("--recon-lr", type=float, metavar="LR", help=f"learning rate of the rounding variables (default {ReconstructionConfig.weight_lr:g})")
    g.add_argument("--recon-act-lr", type=float, metavar="LR", help=f"learning rate of the activation steps (default {ReconstructionConfig.act_lr:g})")
    g.add_argument("--qdrop", type=float, nargs="?", const=0.5, metavar="P",
                   help="QDrop: leave each activation unquantized with probability P while reconstructing (P default 0.5)")
    g.add_argument("--recon-ends", action=argparse.BooleanOptionalAction,
                   help="also reconstruct the patch embedding (against the FP first-block input) and the head (against the "
                   f"FP logits) (default: {'on' if ReconstructionConfig.ends else 'off'}; --no-recon-ends: the blocks only)")
    g.add_argument("--recon-loss", choices=LOSSES,
                   help="the output error a unit minimises: mse, or fisher (each element's squared error weighted by BRECQ's "
                   f"Fisher approximation, the gradient of the KL from the FP logits) (default {ReconstructionConfig.loss})")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from vitquant.nn.nonlinear import TRAIN_KERNELS
    from vitquant.qat import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training (after calibration; never on the evaluation images)")
    g.add_argument("--train-data", type=Path, metavar="DIR",
                   help="training images: an ImageNet root (its train/), class folders or a labels.csv folder "
                   "(default: the calibration folder); the evaluation images are always left out")
    g.add_argument("--steps", type=int, metavar="N", help="optimizer steps (or --epochs; default 1 epoch)")
    g.add_argument("--epochs", type=int, metavar="N", help="passes over the training images (or --steps)")
    g.add_argument("--train-batch-size", type=int, metavar="B", help=f"images per step and process (default {d.batch_size})")
    g.add_argument("--lr", type=float, metavar="LR", help=f"AdamW rate of the weights and float parameters (default {d.lr:g})")
    g.add_argument("--quant-lr", type=float, metavar="LR", help=f"AdamW rate of the quantizer steps and the IRM (default {d.quant_lr:g})")
    g.add_argument("--weight-decay", type=float, metavar="WD", help=f"AdamW decay of the weights (default {d.weight_decay:g})")
    g.add_argument("--warmup", type=float, metavar="F", help=f"fraction of the steps of linear warm-up before the cosine (default {d.warmup:g})")
    g.add_argument("--kd-weight", type=float, metavar="W", help=f"weight of the logit distillation from the FP model (default {d.kd_weight:g})")
    g.add_argument("--dgd-weight", type=float, metavar="W", help=f"weight of Q-ViT's distribution-guided distillation of q, k (default {d.dgd_weight:g})")
    g.add_argument("--label-weight", type=float, metavar="W", help=f"weight of the cross-entropy with the labels (default {d.label_weight:g})")
    g.add_argument("--temperature", type=float, metavar="T", help=f"temperature of the logit distillation (default {d.temperature:g})")
    g.add_argument("--no-irm", action="store_true", help="without Q-ViT's information rectification of q and k")
    g.add_argument("--train-kernels", choices=TRAIN_KERNELS, metavar="MODE",
                   help="how the --nonlinear integer kernels run while training: ste (in the forward pass, the exact op's "
                   f"gradient passed straight through) or float (the exact ops while training, the kernels after); default {d.kernels}")
    g.add_argument("--no-flip", action="store_true", help="without random horizontal flips of the training images")
    g.add_argument("--checkpoint", type=Path, metavar="FILE", help="write the training state to FILE (at the end, and every --checkpoint-every steps)")
    g.add_argument("--checkpoint-every", type=int, metavar="K", help="also write the checkpoint every K steps")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint FILE")


def _add_bad_image_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from vitquant.data import BAD_IMAGE_POLICIES

    p.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="error",
                   help="an image that cannot be decoded: error (default) or skip it (the report names it)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Images and how they are run: shared by ``quantize`` and ``sweep``."""
    from vitquant.evaluation.distributed import DEVICES

    g = p.add_argument_group("data")
    g.add_argument("--calib-data", type=Path, metavar="DIR", help="calibration images (default: the shared ImageNet sample)")
    g.add_argument("--calib-size", type=int, metavar="N", default=32, help="number of calibration images (default 32)")
    g.add_argument("--eval-data", type=Path, metavar="DIR", help="evaluation images (default: same folder as calibration)")
    g.add_argument("--eval-size", type=int, metavar="N", help="evaluate on N images drawn (seeded) from those left after calibration")
    g.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the calibration draw (default 0)")
    g.add_argument("--crop-pct", type=float, metavar="F", help="override the model's eval crop fraction (timm default)")
    _add_bad_image_arg(g)
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=int, metavar="N", default=64, help="evaluation batch size (default 64)")
    g.add_argument("--workers", type=int, metavar="N", default=0, help="image decoding workers (default 0: decode in-process)")
    g.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu (default) or cuda; under torchrun each process takes GPU LOCAL_RANK")


#: commands whose options need no model code: their parser is built without quantize's and train's,
#: whose defaults import the model adapters (timm), so that ``vitquant run MODEL.onnx`` never imports timm
LIGHT_COMMANDS = ("run", "export")


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The command line; ``light``: without the ``quantize`` and ``train`` commands (see :data:`LIGHT_COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="vitquant",
        description="Post-training quantization of Vision Transformers (RepQ-ViT + BitLog2).",
        epilog="Seed-compatible form: vitquant --model deit_tiny --dataset DIR --w_bit 4 --a_bit 4 "
        "--log_quant_scheme BitLog2_Half_17",
    )
    parser.add_argument("--version", action="version", version=f"vitquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    if not light:
        q = sub.add_parser("quantize", help="calibrate, quantize and evaluate a model (the main job)")
        _add_quantize_args(q)
        t = sub.add_parser("train", help="calibrate, then quantization-aware training (Q-ViT: IRM, DGD), then evaluate")
        _add_quantize_args(t)
        _add_training_args(t)
    r = sub.add_parser("run", help="evaluate a saved integer program (.vqm) with the integer executor, or an exported "
                       "ONNX model (.onnx) in onnxruntime")
    r.add_argument("model_file", type=Path, metavar="MODEL.vqm|MODEL.onnx")
    r.add_argument("--eval-data", type=Path, metavar="DIR", help="labelled images (default: the shared ImageNet sample)")
    r.add_argument("--eval-size", type=int, metavar="N", help="evaluate on N images (seeded sample)")
    r.add_argument("--batch-size", type=int, metavar="N", default=64, help="batch size (default 64)")
    r.add_argument("--workers", type=int, metavar="N", default=0, help="image decoding workers (default 0)")
    r.add_argument("--gemm", choices=("int", "float"), default=None,
                   help="float: the fast executor (default; exact int8 and float GEMMs, float64 rounding, the same "
                   "integers as the strict executor, tested); int: the strict executor, pure int64 (slow)")
    r.add_argument("--compile", action="store_true",
                   help="compile the fast executor with torch.compile (needs --gemm float and a C++ compiler; "
                   "the compile time, minutes on a cold cache, is reported apart from the throughput)")
    r.add_argument("--check-simulation", action="store_true",
                   help="also run the program's float64 twin and count the images whose integer logits equal the "
                   "int64 run's (the executor against its own simulation; see docs/guides/integer-inference.md)")
    r.add_argument("--check", type=Path, metavar="MODEL.vqm",
                   help="(.onnx) also run this program's strict executor on the same images and count the images "
                   "whose integer logits equal onnxruntime's on every class")
    r.add_argument("--threads", type=int, metavar="N", help="(.onnx) onnxruntime's intra-op threads (default: its own)")
    _add_bad_image_arg(r)
    r.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to this file")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    x = sub.add_parser("export", help="write a saved integer program (.vqm) as an ONNX model (needs vitquant[onnx])")
    x.add_argument("model_file", type=Path, metavar="MODEL.vqm")
    x.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    x.add_argument("--format", default="integer", choices=_onnx_formats(),
                   help="integer (default): integer ops only, bit for bit the integer executor; qdq: "
                   "QuantizeLinear/DequantizeLinear around float ops (uniform quantizers only)")
    x.add_argument("--image-size", type=int, metavar="N",
                   help="image side, for a program that records no eval transform (default: the recorded one)")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    x.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    w = sub.add_parser("sweep", help="models x recipes x bits as independent jobs, one results file each")
    w.add_argument("--models", default="deit_tiny", metavar="A,B", help="comma-separated model names (default deit_tiny)")
    w.add_argument("--recipes", required=True, metavar="A,B", help="comma-separated recipes ('vitquant recipes' lists them)")
    w.add_argument("--bits", default="4/4", metavar="W/A,...", help="comma-separated weight/activation bits (default 4/4)")
    w.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the results files")
    w.add_argument("--jobs", type=int, default=1, metavar="N", help="jobs run at the same time (default 1)")
    _add_data_args(w)
    w.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    w.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    c = sub.add_parser("compare", help="several recipes on one model and one set of images: markdown + HTML report with figures")
    c.add_argument("--model", default="deit_tiny", metavar="NAME", help="short name or timm name (default deit_tiny)")
    c.add_argument("--weights", type=Path, metavar="PATH", help="state dict; default: shared copy, else timm download")
    c.add_argument("--recipes", required=True, metavar="A,B",
                   help="comma-separated variants: a recipe, optionally with options, e.g. "
                   "bitlog2-half-17,repq-vit+attn_quant=twin-uniform,adalog+nonlinear=ibert")
    c.add_argument("--bits", default="4/4", metavar="W/A,...", help="comma-separated weight/activation bits (default 4/4)")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the report (report.md, report.html, results.json, figures)")
    c.add_argument("--attention-layer", metavar="POINT", help="post-softmax point of the attention figure (default: the middle block's)")
    c.add_argument("--figure-images", type=int, default=8, metavar="N", help="evaluation images the SQNR and histograms are measured on (default 8)")
    c.add_argument("--timing-batch", type=int, default=32, metavar="N", help="images of the throughput comparison (default 32)")
    _add_data_args(c)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    m = sub.add_parser("merge", help="one markdown table of a sweep's results files (failed jobs listed)")
    m.add_argument("folder", type=Path, metavar="DIR")
    m.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table to this file")
    i = sub.add_parser("inspect", help="per-layer table of a report's calibrated parameters or of a .vqm program's ops")
    i.add_argument("file", type=Path, metavar="FILE", help="a 'quantize --json' report, a sweep results file or a .vqm program")
    i.add_argument("--role", metavar="ROLE", help="report: only the points of this role (weight, post_softmax, ...)")
    i.add_argument("--op", metavar="KIND", help="program: only the ops of this kind (linear, requant, ...)")
    i.add_argument("--markdown", action="store_true", help="a markdown table instead of fixed-width text")
    i.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON to this file")
    sub.add_parser("models", help="list the short model names")
    sub.add_parser("schemes", help="list the attention quantization schemes and their levels")
    sub.add_parser("recipes", help="list the quantization recipes")
    return parser


def _onnx_formats() -> list[str]:
    from vitquant.integer.onnx_export import format_names

    return format_names()


def _seed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitquant", description="Seed-compatible form of 'vitquant quantize'.")
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--dataset", type=Path, help="ImageNet root (train/ and val/) or the sample folder")
    p.add_argument("--w_bit", "--w_bits", dest="w_bits", type=int, default=4)
    p.add_argument("--a_bit", "--a_bits", dest="a_bits", type=int, default=4)
    p.add_argument("--log_quant_scheme", dest="attn_quant", default="BitLog2_Half_17")
    p.add_argument("--calib_batchsize", dest="calib_size", type=int, default=32)
    p.add_argument("--val_batchsize", dest="batch_size", type=int, default=64)
    p.add_argument("--num_workers", dest="workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _is_seed_form(argv: Sequence[str]) -> bool:
    """No subcommand, and the flags of the original scripts (e.g. ``--model``, ``--log_quant_scheme``)."""
    if not argv or not argv[0].startswith("-") or argv[0] in ("-h", "--help", "--version"):
        return False
    return any(a.split("=")[0] in _SEED_FLAGS for a in argv)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was created with
    (``main`` called in-process, e.g. by tests or notebooks, may replace and close ``sys.stderr``)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _setup_logging(quiet: bool, verbose: bool) -> None:
    from vitquant.evaluation.distributed import current_shard

    quiet = quiet or not current_shard().is_main  # under torchrun the other ranks log warnings only
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("vitquant: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if quiet:  # the hub client's download retries
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def _print_levels(report: dict) -> None:
    print("\nquantization points (levels used on the calibration images / at most):")
    for point in report["calibration"]["points"]:
        print(f"  {point['name']:<40} {point['quantizer']:<22} {point['levels_used']!s:>4} / {point['max_levels']}")


def _print_skipped(skipped: dict[str, list[str]], shown: int = 10) -> None:
    """Name the images skipped as undecodable (``--on-bad-image skip``), the first ``shown`` of each set."""
    for what, paths in skipped.items():
        if paths:
            more = f" and {len(paths) - shown} more (all in the JSON report)" if len(paths) > shown else ""
            print(f"skipped {len(paths)} undecodable {what} images: {', '.join(paths[:shown])}{more}")


def _check_output_path(path: Path | None, flag: str = "--json") -> None:
    """Fail before any heavy work if an output file could not be written."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    existing = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is not a directory")


_RECON_FLAGS = {"recon_images": "images", "recon_iters": "iters", "recon_batch_size": "batch_size",
                "recon_lr": "weight_lr", "recon_act_lr": "act_lr", "qdrop": "drop_prob", "recon_ends": "ends",
                "recon_loss": "loss"}


def _reconstruction_args(args: argparse.Namespace) -> dict:
    """The QuantizeJob fields of the reconstruction flags given; a flag without reconstruction (neither
    --reconstruct nor a recipe that reconstructs) is an error."""
    from vitquant.recipes import recipe_reconstructs

    given = {k: getattr(args, k) for k in _RECON_FLAGS if getattr(args, k, None) is not None}
    reconstruct = getattr(args, "reconstruct", None)
    if reconstruct is None:
        reconstruct = recipe_reconstructs(getattr(args, "recipe", "bitlog2-half-17"))
    if given and not reconstruct:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(f"{flags} only {verb} with --reconstruct (or a recipe that reconstructs)")
    return {"reconstruct": reconstruct, **given}


def _quantize_fields(args: argparse.Namespace) -> dict:
    """The QuantizeJob fields of ``quantize``'s options (also those of ``train`` and the seed form)."""
    return dict(
        model=args.model,
        weights=args.weights,
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        recipe=getattr(args, "recipe", "bitlog2-half-17"),
        attn_quant=args.attn_quant,
        attn_bits=getattr(args, "attn_bits", None),
        post_gelu=getattr(args, "post_gelu", None),
        ends_bits=getattr(args, "ends_bits", None),
        search=getattr(args, "search", None),
        metric=getattr(args, "metric", None),
        nonlinear=getattr(args, "nonlinear", "float"),
        mixed_rule=getattr(args, "mixed_rule", "sqnr-diff"),
        nonlinear_bits=getattr(args, "nonlinear_bits", None),
        softmax_bits=getattr(args, "softmax_bits", None),
        calib_data=getattr(args, "calib_data", None),
        calib_size=args.calib_size,
        eval_data=getattr(args, "eval_data", None),
        eval_size=getattr(args, "eval_size", None),
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.workers,
        crop_pct=getattr(args, "crop_pct", None),
        save=getattr(args, "save", None),
        device=getattr(args, "device", "cpu"),
        on_bad_image=getattr(args, "on_bad_image", "error"),
        **_reconstruction_args(args),
        compensate=getattr(args, "compensate", None),
        rotate=getattr(args, "rotate", "none"),
        progress=not args.quiet,
    )


def _run_quantize(args: argparse.Namespace) -> int:
    from vitquant.workflow import QuantizeJob, run_quantize

    _check_output_path(args.json)
    _check_output_path(getattr(args, "save", None), "--save")
    return _print_report(run_quantize(QuantizeJob(**_quantize_fields(args))), args)


_TRAIN_FLAGS = {"steps": "steps", "epochs": "epochs", "train_batch_size": "batch_size", "lr": "lr",
                "quant_lr": "quant_lr", "weight_decay": "weight_decay", "warmup": "warmup", "kd_weight": "kd_weight",
                "dgd_weight": "dgd_weight", "label_weight": "label_weight", "temperature": "temperature",
                "checkpoint": "checkpoint", "checkpoint_every": "checkpoint_every", "train_kernels": "kernels"}


def _run_train(args: argparse.Namespace) -> int:
    from vitquant.qat import TrainConfig, TrainJob, run_train

    _check_output_path(args.json)
    _check_output_path(args.save, "--save")
    _check_output_path(args.checkpoint, "--checkpoint")
    given = {field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    training = TrainConfig(**given, irm=not args.no_irm, flip=not args.no_flip, resume=args.resume, seed=args.seed)
    return _print_report(run_train(TrainJob(**_quantize_fields(args), train_data=args.train_data, training=training)), args)


def _print_report(report: dict, args: argparse.Namespace) -> int:
    """Print a quantize (or train) report on rank 0 and write ``--json``."""
    from vitquant.evaluation import format_table, write_json
    from vitquant.evaluation.distributed import current_shard

    if not current_shard().is_main:  # under torchrun only rank 0 prints and writes
        return 0
    cfg = report["config"]
    roles = cfg["qconfig"]["roles"]
    attention = roles["post_softmax"]
    width = f" at {attention['bits']} bits" if attention["bits"] != cfg["a_bits"] else ""
    print(
        f"{cfg['timm_model']}  W{cfg['w_bits']}A{cfg['a_bits']}  recipe {cfg['recipe']}  "
        f"attention {attention['name']}{width}  post-GELU {roles['post_gelu']['name']}\n"
        f"weights: {cfg['weights_source']}\n"
        f"calibration: {report['calibration']['images']} images from {cfg['calib_dir']} (seed {cfg['seed']}); "
        f"evaluation: {report['fp']['images']} other images from {cfg['eval_dir']}\n"
    )
    if width and cfg.get("attn_bits") is None:  # --a-bits wider than the attention quantizer supports
        print(f"note: {attention['name']} supports at most {attention['bits']} bits: the attention map is quantized "
              f"at {attention['bits']} bits (choose with --attn-bits, or another --attn-quant)\n")
    print(format_table(report))
    print(stage_line(report["calibration"]))
    _print_skipped(report["skipped_images"])
    levels = report["attention_levels"]
    print(
        f"attention map ({', '.join(levels['quantizer'])}): at most {levels['max_levels']} levels, "
        f"used {levels['levels_used_min']}-{levels['levels_used_max']} per layer on the calibration images"
    )
    nonlinear = report.get("nonlinear")
    if nonlinear:
        counts = "; ".join(f"{op}: " + ", ".join(f"{f} x{n}" for f, n in fam.items()) for op, fam in nonlinear["counts"].items())
        print(f"non-linear kernels ({cfg['nonlinear']}, rule {nonlinear['rule']}): {counts}")
    if report.get("reconstruction"):
        r = report["reconstruction"]
        before = sum(b["loss_before"] for b in r["blocks"])
        after = sum(b["loss_after"] for b in r["blocks"])
        ends = " (patch embedding and head included)" if r["settings"].get("ends") else ""
        error = "Fisher-weighted unit output error" if r["settings"].get("loss") == "fisher" else "unit output error"
        print(f"reconstruction: {len(r['blocks'])} units{ends} on {r['images']} calibration images, "
              f"{r['settings']['iters']} steps each, {r['seconds']:.1f} s; {error} {before:.4g} -> {after:.4g} (sum)")
        kept = [b["name"] for b in r["blocks"] if b.get("reverted")]
        if kept:
            print(f"  worse after hardening, kept as calibrated: {', '.join(kept)}")
    if report.get("rotation"):
        r = report["rotation"]
        print(f"residual stream rotated before calibration: {r['method']} ({r['construction']} construction, seed {r['seed']})")
    if report.get("compensation"):
        c = report["compensation"]
        before = sum(u["error_before"] for u in c["units"])
        after = sum(u["error_after"] for u in c["units"])
        print(f"compensation ({c['settings']['method']}): {len(c['units'])} blocks on {c['images']} calibration images, "
              f"{c['seconds']:.1f} s; block output error {before:.4g} -> {after:.4g} (sum), "
              f"{c['settings']['bits']}-bit compensation weights and inputs")
    if report.get("training"):
        _print_training(report["training"])
    if report.get("saved"):
        print(f"integer program ({report['saved']['ops']} ops, {report['saved']['bytes'] / 1e6:.2f} MB) written to {report['saved']['path']}")
    if getattr(args, "levels", False):
        _print_levels(report)
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    return 0


def stage_line(calibration: dict) -> str:
    """Where the calibration time went: weights, the forward passes, the searches between them, the
    reparameterization, and the level count after calibration (not in the calibration time)."""
    stages, split = calibration["stage_seconds"], calibration.get("activation_seconds") or {}
    passes = calibration["passes"]
    parts = [f"weights {stages.get('weights', 0.0):.2f} s"]
    if split:
        parts += [f"{passes} forward pass{'es' if passes != 1 else ''} {split['passes']:.2f} s",
                  f"searches {split['searches']:.2f} s"]
    else:
        parts.append(f"activations {stages.get('activations', 0.0):.2f} s ({passes} passes)")
    parts.append(f"reparameterization {stages.get('reparameterization', 0.0):.2f} s")
    line = "calibration stages: " + ", ".join(parts)
    return line + (f"; level count {stages['level_count']:.2f} s" if "level_count" in stages else "")


def _print_training(t: dict) -> None:
    resumed = f", resumed at step {t['resumed_from']}" if t["resumed_from"] is not None else ""
    top1 = "-" if t["running_top1"] is None else f"{t['running_top1']:.1f} %"
    loss = "-" if t["first_loss"] is None else f"{t['first_loss']:.4g} -> {t['last_loss']:.4g}"
    print(f"training: {t['steps']} steps ({t['epochs']:.2f} epochs) on {t['images']} images from {t['folder']} "
          f"({t['held_out_images']} evaluation images held out), batch {t['batch_per_process']} x {t['processes']} "
          f"process(es), {t['seconds']:.1f} s{resumed}; loss {loss}; running top-1 on the training batches {top1}; "
          f"IRM folded in {t['trained']['rectifiers'] // 2} attentions")


def _run_export(args: argparse.Namespace) -> int:
    from vitquant.integer.onnx_export import to_onnx

    _check_output_path(args.output, "-o")
    path = to_onnx(args.model_file, args.output, format=args.format, image_size=args.image_size)
    print(f"{args.model_file} -> {path} ({args.format} ONNX, {path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _run_onnx(args: argparse.Namespace) -> int:
    from vitquant.evaluation import write_json
    from vitquant.integer.onnx_run import OnnxRunJob, run_onnx

    for flag, given in (("--gemm", args.gemm is not None), ("--compile", args.compile),
                        ("--check-simulation", args.check_simulation)):
        if given:
            raise ConfigError(f"{flag} applies to a .vqm program, not to an ONNX model")
    report = run_onnx(OnnxRunJob(
        model_file=args.model_file, eval_data=args.eval_data, eval_size=args.eval_size, batch_size=args.batch_size,
        workers=args.workers, check=args.check, threads=args.threads, on_bad_image=args.on_bad_image,
        progress=not args.quiet,
    ))
    print(f"{args.model_file}: {report['format']} ONNX graph; {report['images']} images from {report['eval_dir']}")
    print(f"onnxruntime: top-1 {report['top1']:.2f} %  top-5 {report['top5']:.2f} %  {report['images_per_second']:.1f} images/s")
    _print_skipped({"evaluation": report["skipped_images"]})
    if report["bit_identical_images"] is not None:
        print(f"strict executor of {args.check}: {report['bit_identical_images']} / {report['images']} images with "
              "bit-identical integer logits")
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    return 0


def _run_program(args: argparse.Namespace) -> int:
    from vitquant.evaluation import write_json
    from vitquant.integer.evaluate import RunJob, run_program

    _check_output_path(args.json)
    if args.model_file.suffix.lower() == ".onnx":
        return _run_onnx(args)
    for flag, given in (("--check", args.check is not None), ("--threads", args.threads is not None)):
        if given:
            raise ConfigError(f"{flag} applies to an ONNX model (.onnx); a .vqm runs in vitquant's executors")
    report = run_program(RunJob(
        model_file=args.model_file, eval_data=args.eval_data, eval_size=args.eval_size, batch_size=args.batch_size,
        workers=args.workers, gemm=args.gemm or "float", compile=args.compile, check_simulation=args.check_simulation,
        on_bad_image=args.on_bad_image, progress=not args.quiet,
    ))
    r = report["integer"]
    print(f"{args.model_file}: {report['program']['ops']} integer ops; {report['images']} images from {report['eval_dir']}")
    compiled = f", compiled in {r['compile_seconds']:.1f} s" if r["compile_seconds"] is not None else ""
    print(f"integer model: top-1 {r['top1']:.2f} %  top-5 {r['top5']:.2f} %  {r['images_per_second']:.1f} images/s "
          f"(gemm {r['gemm']}{compiled})")
    _print_skipped({"evaluation": report["skipped_images"]})
    if "simulation" in report:
        s = report["simulation"]
        print(f"float64 twin: {s['bit_identical_images']} / {s['images']} images with bit-identical logits")
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    return 0


_FORWARDED = ("calib_data", "calib_size", "eval_data", "eval_size", "seed", "crop_pct", "on_bad_image",
              "batch_size", "workers", "device")  # the sweep's options that every job gets


def _run_sweep(args: argparse.Namespace) -> int:
    from vitquant.evaluation.distributed import current_shard
    from vitquant.sweep import parse_bits, parse_names, plan_sweep, run_sweep

    if current_shard().sharded:
        raise ConfigError("vitquant sweep runs its jobs as processes of its own: start it without torchrun")
    jobs = plan_sweep(parse_names(args.models, "--models"), parse_names(args.recipes, "--recipes"), parse_bits(args.bits))
    options = [item for dest in _FORWARDED if getattr(args, dest) is not None
               for item in (f"--{dest.replace('_', '-')}", str(getattr(args, dest)))]
    outcomes = run_sweep(jobs, args.out, options, args.jobs)
    failed = [o for o in outcomes if o["status"] != "ok"]
    for outcome in failed:
        print(f"failed: {Path(outcome['file']).name}: {outcome['error']}")
    print(f"{len(outcomes)} results files in {args.out} ({len(outcomes) - len(failed)} ok, {len(failed)} failed); "
          f"table: vitquant merge {args.out}")
    return 1 if failed else 0


def _run_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from vitquant.compare import CompareJob, plan_variants, run_compare, write_report
    from vitquant.compare.render import COLUMNS, table_rows
    from vitquant.sweep import parse_bits, parse_names

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is not a directory")
    variants = plan_variants(parse_names(args.recipes, "--recipes"), parse_bits(args.bits))
    job = CompareJob(
        model=args.model, weights=args.weights, **{k: getattr(args, k) for k in _FORWARDED},
        attention_layer=args.attention_layer, figure_images=args.figure_images, timing_batch=args.timing_batch,
        progress=not args.quiet,
    )
    results = run_compare(job, variants)
    results["command"] = shlex.join(["vitquant", *argv])
    paths = write_report(results, args.out)
    widths = [max(len(r[i]) for r in [list(COLUMNS), *table_rows(results)]) for i in range(len(COLUMNS))]
    for cells in [list(COLUMNS), *table_rows(results)]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    failed = [r for r in results["rows"] if r["status"] != "ok"]
    print(f"report: {paths['markdown']} and {paths['html']} ({len(paths) - 3} figures); data: {paths['json']}")
    return 1 if failed else 0


def _run_merge(args: argparse.Namespace) -> int:
    from vitquant.sweep import markdown_table, read_results

    _check_output_path(args.markdown, "--markdown")
    table = markdown_table(read_results(args.folder))
    print(table, end="")
    if args.markdown:
        try:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table, encoding="utf-8")
        except OSError as exc:
            raise VitQuantError(f"cannot write {args.markdown}: {exc}") from exc
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from vitquant.evaluation import write_json
    from vitquant.inspection import inspect_file

    _check_output_path(args.json)
    inspection = inspect_file(args.file, role=args.role, op=args.op)
    print(inspection.format(markdown=args.markdown), end="")
    if args.json:
        write_json(inspection.to_dict(), args.json)
    return 0


def _list_models() -> int:
    from vitquant.models import SHORT_NAMES

    for short, timm_name in SHORT_NAMES.items():
        print(f"{short:<12} {timm_name}")
    print("(any other timm ViT/DeiT/Swin model name works too)")
    return 0


def _list_recipes() -> int:
    from vitquant.recipes import recipe_names, recipe_summary

    for name in recipe_names():
        print(f"{name:<20} {recipe_summary(name)}")
    return 0


def _list_schemes() -> int:
    from vitquant.qconfig import ATTENTION_SCHEMES, OTHER_ATTENTION_QUANTIZERS, attention_spec

    for name in ATTENTION_SCHEMES + OTHER_ATTENTION_QUANTIZERS:
        spec = attention_spec(name, 4)
        print(f"{name:<20} {spec.name:<20} {spec.max_levels} levels at 4 bit")
    return 0


def _error_text(exc: Exception) -> str:
    """The message of an error; for one re-raised from a DataLoader worker, its last line only."""
    text = str(exc).strip()
    return text.splitlines()[-1] if "Original Traceback" in text else text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if _is_seed_form(argv):
            args = _seed_parser().parse_args(argv)
            args.calib_data = args.eval_data = args.dataset
            _setup_logging(args.quiet, False)
            return _run_quantize(args)
        args = build_parser(light=bool(argv) and argv[0] in LIGHT_COMMANDS).parse_args(argv)
        if args.command == "models":
            return _list_models()
        if args.command == "schemes":
            return _list_schemes()
        if args.command == "recipes":
            return _list_recipes()
        if args.command == "merge":
            return _run_merge(args)
        if args.command == "inspect":
            return _run_inspect(args)
        _setup_logging(args.quiet, args.verbose)
        if args.command == "run":
            return _run_program(args)
        if args.command == "export":
            return _run_export(args)
        if args.command == "sweep":
            return _run_sweep(args)
        if args.command == "compare":
            return _run_compare(args, argv)
        if args.command == "train":
            return _run_train(args)
        return _run_quantize(args)
    except VitQuantError as exc:
        print(f"vitquant: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitquant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
