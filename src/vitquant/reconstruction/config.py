"""Settings of block reconstruction, as plain data (validated on construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vitquant.errors import ConfigError

MAX_DEFAULT_IMAGES = 1024  # images=None: every calibration image, up to this many
#: the output error a unit minimises: plain squared error, or weighted by BRECQ's Fisher approximation
LOSSES = ("mse", "fisher")


@dataclass(frozen=True)
class ReconstructionConfig:
    """How each block is reconstructed (BRECQ / QDrop style).

    - ``images``: reconstruction images (None: every image given, up to 1024; more than given is an
      error);
    - ``iters``: Adam steps per block, each on ``batch_size`` images drawn at random;
    - ``weight_lr``: Adam learning rate of the rounding variables V (AdaRound); ``act_lr``: of the
      activation steps Δ (LSQ), cosine-annealed to 0;
    - ``reg_weight`` λ of the rounding regulariser, off for the first ``warmup`` fraction of the
      steps, then with β annealed linearly from ``beta[0]`` to ``beta[1]``;
    - ``drop_prob``: QDrop's probability of leaving an activation unquantized (0: BRECQ);
    - ``ends``: also reconstruct the patch embedding (first; target: the FP model's first-block input,
      tokens and position embedding included) and the head (last: final norm, pooling, classifier;
      target: the FP logits, squared error summed over the classes), besides the blocks (default on);
    - ``loss``: ``mse`` (squared error summed over channels, mean over tokens and images) or ``fisher``
      (each element's squared error weighted by BRECQ's diagonal Fisher approximation,
      :mod:`vitquant.reconstruction.fisher`);
    - ``seed``: batches and QDrop masks (a unit's generator is seeded with ``seed`` + its index).
    """

    images: int | None = None
    iters: int = 200
    batch_size: int = 32
    weight_lr: float = 1e-2
    act_lr: float = 4e-5
    reg_weight: float = 0.01
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)
    drop_prob: float = 0.0
    ends: bool = True
    loss: str = "mse"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images is not None and (isinstance(self.images, bool) or self.images < 1):
            raise ConfigError(f"--recon-images must be at least 1, got {self.images}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ConfigError(f"--recon-iters must be a positive integer, got {self.iters}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--recon-batch-size must be a positive integer, got {self.batch_size}")
        for name in ("weight_lr", "act_lr"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ConfigError(f"reconstruction {name} must be a finite number > 0, got {value}")
        if not self.reg_weight >= 0:
            raise ConfigError(f"reconstruction reg_weight must be >= 0, got {self.reg_weight}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"reconstruction warmup must be in [0, 1), got {self.warmup}")
        if len(self.beta) != 2 or not all(b > 0 for b in self.beta):
            raise ConfigError(f"reconstruction beta must be two numbers > 0, got {self.beta}")
        if not isinstance(self.ends, bool):
            raise ConfigError(f"reconstruction ends must be True or False, got {self.ends!r}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"--qdrop must be in [0, 1), got {self.drop_prob}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown --recon-loss {self.loss!r}; choose one of {', '.join(LOSSES)}")

    def image_count(self, available: int) -> int:
        """How many of ``available`` images reconstruct (``images`` more than available: ConfigError)."""
        if self.images is None:
            return min(available, MAX_DEFAULT_IMAGES)
        if self.images > available:
            raise ConfigError(
                f"--recon-images {self.images}: only {available} calibration images; raise --calib-size "
                "(reconstruction uses the calibration images)"
            )
        return self.images

    def beta_at(self, step: int) -> float | None:
        """β of the rounding regulariser at ``step`` (None during the warm-up: no regulariser)."""
        start = int(self.warmup * self.iters)
        if step < start:
            return None
        t = (step - start) / max(1, self.iters - start)
        return self.beta[1] + (self.beta[0] - self.beta[1]) * max(0.0, 1.0 - t)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["beta"] = list(self.beta)
        return out
