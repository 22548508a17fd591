"""Settings of quantization-aware training, as plain data (validated on construction)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vitquant.errors import ConfigError
from vitquant.nn.nonlinear import TRAIN_KERNELS

#: fields that may differ between a run and the run it resumes (where and how often to save)
RESUME_FREE = ("checkpoint", "checkpoint_every", "resume")


def _positive_int(value: object, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


def _number(value: object, flag: str, minimum: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ConfigError(f"{flag} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How the calibrated model is trained (:mod:`vitquant.qat.trainer`).

    - ``steps`` or ``epochs`` (not both; neither: 1 epoch): optimizer steps, each on ``batch_size``
      images per process; an epoch is every training image once (the last incomplete batch dropped);
    - AdamW: ``lr`` for the weights and the other float parameters (biases, LayerNorm, tokens),
      ``quant_lr`` for the quantizer steps (LSQ) and the IRM's γ, β; ``weight_decay`` on matrices
      only; the rate warms up linearly over the first ``warmup`` fraction of the steps, then follows
      a cosine to 0 (:mod:`vitquant.qat.schedule`);
    - loss: ``kd_weight`` · KD(teacher ‖ student, ``temperature``) + ``dgd_weight`` · DGD +
      ``label_weight`` · cross-entropy with the labels (:mod:`vitquant.qat.distill`); DGD, a sum over
      layers and heads, is two orders of magnitude above KD on the real DeiT-Tiny, hence its weight 0.01
      (the benchmark's QAT rows);
    - ``irm``: Q-ViT's Information Rectification Module before the q and k quantizers
      (:mod:`vitquant.qat.irm`), folded into ``qkv`` at the end;
    - ``kernels``: how the model's integer non-linear kernels (``--nonlinear``) run while training:
      ``ste`` (default) in the forward pass, as the model is evaluated, with the exact float op's
      gradient passed straight through (the Mixed Non-linear paper's QAT of the integer-only model);
      ``float``: the exact float ops instead, the kernels active again afterwards. Without kernels
      (``--nonlinear float``) both are the same;
    - ``flip``: random horizontal flips of the training images (seeded per step);
    - ``checkpoint``: a file written every ``checkpoint_every`` steps (None: only at the end) and at
      the end; ``resume``: continue from it;
    - ``seed``: the order of the images and the flips.
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 2e-5
    quant_lr: float = 1e-5  # 1e-4 lost 18 points in 43 steps at W3A3 on DeiT-Tiny; 1e-5 gained 5 (and W4A4: a wash)
    weight_decay: float = 0.05
    warmup: float = 0.1
    kd_weight: float = 1.0
    dgd_weight: float = 0.01  # DGD is summed over layers and heads: ~300-450 on DeiT-Tiny against a KD of ~0.5-6
    label_weight: float = 0.0
    temperature: float = 1.0
    irm: bool = True
    kernels: str = "ste"
    flip: bool = True
    checkpoint: Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"give --steps or --epochs, not both (got {self.steps} steps and {self.epochs} epochs)")
        if self.steps is not None:
            _positive_int(self.steps, "--steps")
        if self.epochs is not None:
            _positive_int(self.epochs, "--epochs")
        _positive_int(self.batch_size, "--train-batch-size")
        _number(self.lr, "--lr", 0.0, strict=True)
        _number(self.quant_lr, "--quant-lr", 0.0, strict=True)
        _number(self.weight_decay, "--weight-decay", 0.0, strict=False)
        if not (isinstance(self.warmup, (int, float)) and 0.0 <= self.warmup < 1.0):
            raise ConfigError(f"--warmup must be a fraction of the steps in [0, 1), got {self.warmup!r}")
        for name in ("kd_weight", "dgd_weight", "label_weight"):
            _number(getattr(self, name), "--" + name.replace("_", "-"), 0.0, strict=False)
        if self.kd_weight == self.dgd_weight == self.label_weight == 0:
            raise ConfigError("nothing to train on: --kd-weight, --dgd-weight and --label-weight are all 0")
        _number(self.temperature, "--temperature", 0.0, strict=True)
        if self.kernels not in TRAIN_KERNELS:
            raise ConfigError(f"--train-kernels must be one of {', '.join(TRAIN_KERNELS)}, got {self.kernels!r}")
        if self.checkpoint_every is not None:
            _positive_int(self.checkpoint_every, "--checkpoint-every")
            if self.checkpoint is None:
                raise ConfigError("--checkpoint-every needs --checkpoint FILE")
        if self.resume and self.checkpoint is None:
            raise ConfigError("--resume needs --checkpoint FILE (the checkpoint to continue from)")
        if self.checkpoint is not None and Path(self.checkpoint).is_dir():
            raise ConfigError(f"--checkpoint {self.checkpoint} is a directory; give a file name")

    def total_steps(self, images: int, world_size: int = 1) -> int:
        """Steps of the run on ``images`` training images shared by ``world_size`` processes; a
        :class:`ConfigError` when they do not fill one step's batch of ``batch_size`` x ``world_size``."""
        per_step = self.batch_size * world_size
        if images < per_step:
            raise ConfigError(
                f"{images} training images do not fill one step of {per_step} images (--train-batch-size "
                f"{self.batch_size} x {world_size} processes): lower --train-batch-size or give more images"
            )
        if self.steps is not None:
            return self.steps
        return (self.epochs or 1) * (images // per_step)

    def warmup_steps(self, total: int) -> int:
        """Steps of the linear warm-up: ``warmup`` of ``total``, rounded (at most ``total`` - 1)."""
        return min(round(self.warmup * total), total - 1)

    def resume_key(self) -> dict[str, Any]:
        """What a checkpoint must have been written with to be resumed by this configuration."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RESUME_FREE}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        return out
