"""The main job, as a library function: quantize a timm model and measure what it cost.

model [-> its residual stream rotated, the same function] + calibration images -> quantized model
[-> block reconstruction on the calibration images,
-> compensation (QwT) on them] [-> a further stage, e.g. quantization-aware training (:mod:`vitquant.qat.job`)] -> report (FP and
quantized accuracy on the same images, fidelity, timings, levels used). The CLI and the benchmarks call
:func:`run_quantize`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from vitquant import __version__
from vitquant.calibration import CalibrationResult, quantize_model
from vitquant.compensation import CompensationConfig, compensate, compensation_methods
from vitquant.rotation import ROTATIONS, rotate
from vitquant.data import (
    ImageRecord,
    check_bad_image_policy,
    data_config,
    eval_transform,
    list_images,
    load_images,
    make_loader,
    split_calibration_eval,
)
from vitquant.data.transforms import check_crop_pct
from vitquant.errors import ConfigError, DataError, VitQuantError
from vitquant.evaluation import PairEvaluation, build_report, log_pair, run_pair
from vitquant.evaluation.distributed import (
    DEVICES,
    Shard,
    check_same_everywhere,
    current_shard,
    gather_pair,
    model_fingerprint,
    on_main,
    resolve_device,
    sharded_session,
)
from vitquant.models import create_model, resolve_model_name
from vitquant.nonlinear import NonlinearConfig
from vitquant.paths import default_sample_images, source_commit
from vitquant.qconfig import ALL_ROLES, POST_SOFTMAX, QConfig, normalize_scheme_name
from vitquant.quantizers.base import check_bits
from vitquant.recipes import build_qconfig, normalize_recipe_name, recipe_compensation, recipe_reconstructs
from vitquant.reconstruction import ReconstructionConfig, reconstruct

log = logging.getLogger(__name__)


@dataclass
class QuantizeJob:
    """Everything the main job needs; defaults reproduce the README's main command."""

    model: str = "deit_tiny"
    weights: Path | None = None
    w_bits: int = 4
    a_bits: int = 4
    recipe: str = "bitlog2-half-17"
    attn_quant: str | None = None  # None: the recipe's
    attn_bits: int | None = None
    post_gelu: str | None = None
    ends_bits: int | None = None  # None: the ends (patch-embedding weight, head) as the rest
    search: str | None = None
    metric: str | None = None
    nonlinear: str = "float"  # float | ivit | ibert | fqvit | mixed
    mixed_rule: str = "sqnr-diff"
    nonlinear_bits: int | None = None  # None: the kernels' own input width (16)
    softmax_bits: int | None = None  # None: each softmax kernel family's output width (I-ViT, I-BERT: 16)
    calib_data: Path | None = None
    calib_size: int = 32
    eval_data: Path | None = None
    eval_size: int | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int = 0
    crop_pct: float | None = None
    save: Path | None = None  # write the integer program (.vqm) of the calibrated model
    device: str = "cpu"  # cpu | cuda (under torchrun: this process's GPU, cuda:LOCAL_RANK)
    on_bad_image: str = "error"  # error | skip: what an undecodable image does
    reconstruct: bool | None = None  # block reconstruction after calibration (None: as the recipe says)
    recon_images: int | None = None  # None: every calibration image, up to 1024
    recon_iters: int = ReconstructionConfig.iters
    recon_batch_size: int = ReconstructionConfig.batch_size
    recon_lr: float = ReconstructionConfig.weight_lr  # rounding variables (AdaRound)
    recon_act_lr: float = ReconstructionConfig.act_lr  # activation steps (LSQ)
    qdrop: float = 0.0  # QDrop's probability of leaving an activation unquantized while reconstructing
    recon_ends: bool = ReconstructionConfig.ends  # also the patch embedding and the head
    recon_loss: str = ReconstructionConfig.loss  # mse | fisher (BRECQ's Fisher-weighted squared error)
    compensate: str | None = None  # after calibration (and reconstruction): qwt | none (None: as the recipe says)
    rotate: str = "none"  # before calibration, the residual stream of the FP model: hadamard | orthogonal | none
    progress: bool = True

    def validate(self) -> None:
        check_bits(self.w_bits, "--w-bits")
        check_bits(self.a_bits, "--a-bits")
        if self.attn_bits is not None:
            check_bits(self.attn_bits, "--attn-bits")
        if self.ends_bits is not None:
            check_bits(self.ends_bits, "--ends-bits")
        if self.nonlinear_bits is not None:
            check_bits(self.nonlinear_bits, "--nonlinear-bits", 2, 16)
        if self.softmax_bits is not None:
            check_bits(self.softmax_bits, "--softmax-bits", 2, 16)
        self.recipe = normalize_recipe_name(self.recipe)
        if self.reconstruct is None:
            self.reconstruct = recipe_reconstructs(self.recipe)
        if self.compensate is None:
            self.compensate = recipe_compensation(self.recipe) or "none"
        self.compensate = self.compensate.strip().lower()
        self.rotate = self.rotate.strip().lower()
        if self.rotate != "none" and self.rotate not in ROTATIONS:
            raise ConfigError(f"unknown --rotate {self.rotate!r}; choose one of {', '.join([*ROTATIONS, 'none'])}")
        if self.compensate != "none" and self.compensate not in compensation_methods():
            raise ConfigError(f"unknown --compensate {self.compensate!r}; choose one of "
                              f"{', '.join([*compensation_methods(), 'none'])}")
        if self.attn_quant is not None:
            self.attn_quant = normalize_scheme_name(self.attn_quant)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.crop_pct is not None:
            check_crop_pct(self.crop_pct)
        check_bad_image_policy(self.on_bad_image)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown --device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.reconstruct:
            self.reconstruction().image_count(self.calib_size)

    def reconstruction(self) -> ReconstructionConfig:
        """The reconstruction settings (validated; seeded with the job's seed)."""
        return ReconstructionConfig(
            images=self.recon_images, iters=self.recon_iters, batch_size=self.recon_batch_size,
            weight_lr=self.recon_lr, act_lr=self.recon_act_lr, drop_prob=self.qdrop, ends=self.recon_ends,
            loss=self.recon_loss, seed=self.seed,
        )

    def qconfig(self) -> QConfig:
        qconfig = build_qconfig(
            self.recipe, self.w_bits, self.a_bits, attn_quant=self.attn_quant, attn_bits=self.attn_bits,
            post_gelu=self.post_gelu, search=self.search, metric=self.metric, ends_bits=self.ends_bits,
        )
        return qconfig.with_nonlinear(NonlinearConfig.everywhere(
            self.nonlinear, self.nonlinear_bits, self.mixed_rule, softmax_bits=self.softmax_bits))


@dataclass
class JobData:
    """Calibration and evaluation images of a job, disjoint."""

    calibration: list[ImageRecord]
    evaluation: list[ImageRecord]
    calib_dir: Path
    eval_dir: Path


def resolve_data(job: QuantizeJob) -> JobData:
    """Pick the folders (defaulting to the shared ImageNet sample) and split them, disjoint and seeded."""
    default = default_sample_images()
    calib_dir = job.calib_data or job.eval_data or default
    eval_dir = job.eval_data or job.calib_data or default
    if calib_dir is None or eval_dir is None:
        raise DataError(
            "no images: pass --calib-data DIR and/or --eval-data DIR (an ImageNet folder with val/ "
            "and train/, class sub-folders, or a folder with labels.csv)"
        )
    calib_pool = list_images(calib_dir, split="train")
    eval_pool = list_images(eval_dir, split="val")
    calibration, evaluation = split_calibration_eval(calib_pool, eval_pool, job.calib_size, job.eval_size, job.seed)
    return JobData(calibration, evaluation, Path(calib_dir), Path(eval_dir))


def check_labels(data: JobData, model: torch.nn.Module) -> None:
    """Every evaluation label must be a class of the model."""
    check_record_labels(data.evaluation, data.eval_dir, model)


def check_record_labels(records: list[ImageRecord], folder: Path, model: torch.nn.Module) -> None:
    """Every label of ``records`` (from ``folder``) must be a class of the model."""
    classes = int(getattr(model, "num_classes", 0) or 0)
    top = max(r.label for r in records)
    if classes and top >= classes:
        raise DataError(f"label {top} in {folder} is not a class of this {classes}-class model")


@dataclass
class StageInputs:
    """What a stage after calibration works with (see :class:`Stage`)."""

    float_model: torch.nn.Module
    result: CalibrationResult  # the calibrated (and maybe reconstructed) model
    calib_images: torch.Tensor  # decoded, on ``device``
    data: JobData
    transform: Any  # the model's eval transform
    shard: Shard
    device: torch.device
    progress: bool


class Stage(Protocol):
    """A step between calibration and evaluation that changes the calibrated model (quantization-aware
    training: :class:`vitquant.qat.job.TrainingStage`). ``name`` is its key in the report."""

    name: str

    def check(self, data: JobData) -> None:
        """Cheap checks of its own inputs, before the weights are loaded (a missing folder fails early)."""

    def run(self, inputs: StageInputs) -> tuple[CalibrationResult, dict[str, Any]]:
        """The changed model's calibration result (an ordinary calibrated model) and the report section."""


def _plain(value: Any) -> Any:
    """``value`` with every Path a string, also inside dicts (a job's nested settings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def _json_ready(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def save_integer_program(qmodel: torch.nn.Module, path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Convert the calibrated model to an integer program (:mod:`vitquant.integer`) and write it to
    ``path``; returns what the report records (path, bytes, ops)."""
    from vitquant.integer.conversion import convert_model

    program = convert_model(qmodel)
    program.info.update(info)
    program.save(path)
    size = Path(path).stat().st_size
    log.info("integer program: %d ops, %d tensors, %.2f MB written to %s", len(program.ops), len(program.tensors), size / 1e6, path)
    return {"path": str(path), "bytes": size, "ops": len(program.ops)}


def _saved_program(qmodel: torch.nn.Module) -> Any:
    """The program :func:`save_integer_program` writes (the same deterministic conversion, on every rank),
    run by the fast executor: the strict executor's integers (tested), what a user of the file gets."""
    from vitquant.integer.conversion import convert_model
    from vitquant.integer.execute import IntegerModel

    return IntegerModel(convert_model(qmodel), gemm="float")


def _program_section(evaluation: PairEvaluation) -> dict[str, Any]:
    """The saved integer program's accuracy on the evaluation images, and its agreement with the
    simulated (fake-quantized) model and with FP: the report's figures for what the user saved."""
    run, vs_q, vs_fp = evaluation.program, evaluation.program_vs_quantized, evaluation.program_vs_fp
    assert run is not None and vs_q is not None and vs_fp is not None
    return {"top1": run.meter.top1, "top5": run.meter.top5, "images": run.images,
            "images_per_second": run.images_per_second, "executor": "fast",
            "agreement_quantized": vs_q.top1_agreement, "kl_quantized": vs_q.mean_kl,
            "agreement_fp": vs_fp.top1_agreement, "kl_fp": vs_fp.mean_kl}


def _levels_summary(result: CalibrationResult) -> dict[str, Any]:
    return {role: result.role_summary(role) for role in ALL_ROLES if any(p.role == role for p in result.points)}


def _evaluate_share(
    model: torch.nn.Module, qmodel: torch.nn.Module, data: JobData, transform: Any, job: QuantizeJob, shard: Shard,
    program: Any = None,
) -> PairEvaluation | VitQuantError:
    """This process's share of the evaluation (with ``program``, the saved integer program's too); a user
    error is handed back for :func:`gather_pair` to raise on every process."""
    try:
        loader = make_loader(data.evaluation, transform, job.batch_size, job.workers, job.on_bad_image,
                             rank=shard.rank, world_size=shard.world_size)
        return run_pair(model, qmodel, loader, progress=job.progress and shard.is_main, program=program)
    except VitQuantError as exc:
        return exc


def run_quantize(job: QuantizeJob, stage: Stage | None = None) -> dict[str, Any]:
    """Run the main job and return the report dict (see :func:`vitquant.evaluation.build_report`);
    ``stage`` runs after calibration (and reconstruction) and adds its section to the report.

    Under ``torchrun`` every process calibrates (the same images, the same seed: the engine is
    deterministic, and the processes check that their calibrated models are identical), evaluates its share
    of the images, and gets the merged report; only rank 0 writes ``job.save``.
    """
    job.validate()
    qconfig = job.qconfig()  # fail on impossible bit widths before any heavy work
    timm_name = resolve_model_name(job.model)
    shard = current_shard()
    device = resolve_device(job.device, shard)
    torch.manual_seed(job.seed)

    data = resolve_data(job)  # cheap checks of the images before loading (or downloading) weights
    if stage is not None:
        stage.check(data)
    model, weights_source = create_model(job.model, job.weights)
    check_labels(data, model)
    model = model.to(device)
    transform = eval_transform(model, job.crop_pct)
    float_model, rotation = model, None
    if job.rotate != "none":  # the same function; calibration and the stages after it work on this one
        float_model, used = rotate(model, job.rotate, job.seed)
        rotation = {"method": job.rotate, "construction": used, "seed": job.seed}
        log.info("residual stream rotated (%s, %s construction)", job.rotate, used)
    log.info(
        "calibration: %d images from %s; evaluation: %d images from %s",
        len(data.calibration), data.calib_dir, len(data.evaluation), data.eval_dir,
    )

    with sharded_session(shard, device):
        t = time.perf_counter()
        calib = load_images(data.calibration, transform, job.on_bad_image)
        calib_images = calib.images.to(device)
        decode_seconds = time.perf_counter() - t
        attention = qconfig.specs[POST_SOFTMAX].name
        log.info("calibrating %s (W%dA%d, recipe %s, attention %s) ...", timm_name, job.w_bits, job.a_bits, job.recipe, attention)
        result = quantize_model(float_model, calib_images, qconfig, progress=job.progress and shard.is_main)
        log.info("calibration took %.2f s (image decoding %.2f s excluded)", result.seconds, decode_seconds)
        recon = None
        if job.reconstruct:
            settings = job.reconstruction()
            log.info("reconstructing every block on %d calibration images ...", settings.image_count(len(calib_images)))
            recon = reconstruct(float_model, result, calib_images, settings, progress=job.progress and shard.is_main)
            result = recon.calibration
        comp = None
        if job.compensate != "none":
            log.info("compensating every block (%s) on %d calibration images ...", job.compensate, len(calib_images))
            comp = compensate(float_model, result, calib_images, CompensationConfig(method=job.compensate))
            result = comp.calibration
        section = None
        if stage is not None:
            result, section = stage.run(StageInputs(float_model, result, calib_images, data, transform, shard, device,
                                                    job.progress and shard.is_main))
        if shard.sharded:
            fingerprint = model_fingerprint(result.model, result.qconfig.to_dict())
            check_same_everywhere(fingerprint, shard, "the calibrated model" if stage is None else f"the model after {stage.name}")
        saved, program = None, None
        if job.save is not None:  # before evaluation: a model without an integer path fails early
            saved = on_main(shard, lambda: save_integer_program(result.model, job.save, {
                "timm_model": timm_name, "qconfig": result.qconfig.to_dict(), **source_commit(),
                "calib_dir": str(data.calib_dir.resolve()), "calib_size": job.calib_size, "seed": job.seed,
                "transform": _json_ready(data_config(model, job.crop_pct)),
            }))
            program = _saved_program(result.model)
        evaluation = gather_pair(_evaluate_share(model, result.model, data, transform, job, shard, program), shard)
    log_pair(evaluation)

    config = {
        **{k: _plain(v) for k, v in asdict(job).items() if k != "progress"},
        "timm_model": timm_name,
        "weights_source": weights_source,
        "calib_dir": str(data.calib_dir.resolve()),
        "eval_dir": str(data.eval_dir.resolve()),
        "transform": _json_ready(data_config(model, job.crop_pct)),
        "qconfig": result.qconfig.to_dict(),  # resolved: mixed kernel choices pinned per layer
        "vitquant_version": __version__,
        **source_commit(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "processes": shard.world_size,
    }
    extra = {
        "attention_levels": result.role_summary(POST_SOFTMAX),
        "levels": _levels_summary(result),
        "calibration": result.to_dict(),
        "calibration_decode_seconds": decode_seconds,
        "nonlinear": None if result.nonlinear is None else result.nonlinear.to_dict(),
        "saved": saved,
        "integer_program": None if evaluation.program is None else _program_section(evaluation),
        # which model the report's figures are for: the saved program where there is one (what the user gets)
        "reported_model": "quantized" if evaluation.program is None else "integer_program",
        "skipped_images": {"calibration": list(calib.skipped), "evaluation": evaluation.skipped},
        "reconstruction": None if recon is None else recon.to_dict(),
        "compensation": None if comp is None else comp.to_dict(),
        "rotation": rotation,
        **({} if stage is None else {stage.name: section}),
    }
    return build_report(
        config=config,
        fp=evaluation.fp,
        quantized=evaluation.quantized,
        fidelity=evaluation.fidelity,
        calibration_seconds=result.seconds,
        extra=extra,
    )
