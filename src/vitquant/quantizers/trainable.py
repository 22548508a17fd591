"""Trainable stand-ins for fitted quantizers, used by block reconstruction (:mod:`vitquant.reconstruction`).

Each wraps a fitted quantizer, starts from its calibrated values and rounds with the straight-through
estimator (STE: ``round`` in the forward, identity in the backward). :meth:`harden` gives back an
ordinary fitted :class:`~vitquant.quantizers.uniform.UniformQuantizer`.

- :class:`LSQActivation` (LSQ, Esser et al., ICLR 2020): a learnable step Δ, fixed zero point z,

      x̂ = round_ste(clamp(x · (1/Δ), -z, 2^b - 1 - z)) · Δ,
      ∂x̂/∂Δ = round(x/Δ) - x/Δ where -z < x/Δ < 2^b - 1 - z, else the bound -z or 2^b - 1 - z.

  LSQ's gradient scale 1/sqrt(N·qmax) is left out: Adam's update is invariant to a constant factor.
- :class:`LSQWeight` (quantization-aware training, :mod:`vitquant.qat`): the same LSQ step on a weight,
  per output channel, and the latent float weight W itself trains (∂Ŵ/∂W = 1 inside the code range,
  0 outside, by the STE).
- :class:`FrozenActivation`: a quantizer whose kind does not train (``trainable`` False: BitLog2,
  log√2, AdaLog, twin-uniform), x̂ = x + (Q(x) - x) with the bracket detached (gradient 1 to x).
- :class:`AdaRoundWeight` (AdaRound, Nagel et al., ICML 2020): the weight's step Δ and zero point stay;
  each weight learns whether it rounds up or down,

      Ŵ = clamp(floor(W / Δ) + h(V), -z, 2^b - 1 - z) · Δ,   h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1),

  ζ = 1.1, γ = -0.1, V initialised so that h(V) = W/Δ - floor(W/Δ) (Ŵ starts at W inside the range);
  the regulariser Σ 1 - |2h(V) - 1|^β pushes every h to 0 or 1. Hardened, the code is floor + [V ≥ 0],
  at most one step from round-to-nearest.

Both activation wrappers can drop quantization at random (QDrop, Wei et al., ICLR 2022): with
probability ``drop_prob`` an element passes at full precision.
"""

from __future__ import annotations

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer
from vitquant.quantizers.uniform import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, gradient 1 backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def lsq_quantize(x: torch.Tensor, scale: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor) -> torch.Tensor:
    """LSQ's fake quantization x̂ = round_ste(clamp(x · (1/Δ), code_min, code_max)) · Δ (codes q - z), with
    1/Δ rounded once as :class:`UniformQuantizer` does: the same values as the fitted quantizer of that
    step, bit for bit (so training starts at the calibrated model and hardening changes nothing)."""
    return round_ste(torch.clamp(x * (1.0 / scale), code_min, code_max)) * scale


class _Dropping(nn.Module):
    """QDrop: with probability ``drop_prob`` an element keeps its full-precision value.

    The mask is drawn on the generator's device (the CPU for a CPU generator) and moved to the input's,
    so a seeded run drops the same elements on the CPU and on a GPU."""

    def __init__(self, drop_prob: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ConfigError(f"QDrop probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob
        self.generator = generator

    def _drop(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x_hat
        device = self.generator.device if self.generator is not None else x.device
        keep = torch.rand(x.shape, generator=self.generator, dtype=x.dtype, device=device) < self.drop_prob
        return torch.where(keep.to(x.device), x, x_hat)


class LSQActivation(_Dropping):
    """A fitted uniform quantizer with its step Δ as a parameter (LSQ); ``harden()`` -> UniformQuantizer."""

    def __init__(self, quantizer: UniformQuantizer, drop_prob: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(drop_prob, generator)
        self.bits = quantizer.bits
        self.scale = nn.Parameter(quantizer.scale.detach().clone())
        self.register_buffer("zero_point", quantizer.zero_point.detach().clone())
        self.register_buffer("code_min", quantizer.code_min.detach().clone())
        self.register_buffer("code_max", quantizer.code_max.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._drop(x, lsq_quantize(x, self.scale, self.code_min, self.code_max))

    def integer_view(self, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q - z, Δ) of an output ``x_hat = (q - z)·Δ`` (float64, no gradient), as
        :meth:`UniformQuantizer.integer_view`: what an integer softmax takes while training. Elements
        QDrop left unquantized are off the grid: rounded onto it."""
        scale = self.scale.detach().double()
        return torch.round(x_hat.detach().double() / scale), scale

    def harden(self) -> UniformQuantizer:
        """The fitted quantizer with the learned step (kept positive)."""
        scale = self.scale.detach().clamp(min=torch.finfo(torch.float32).tiny)
        return UniformQuantizer(self.bits, scale.clone(), self.zero_point.clone())


class FrozenActivation(_Dropping):
    """A quantizer that does not train: its own forward, gradient passed straight through to x."""

    def __init__(self, quantizer: Quantizer, drop_prob: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(drop_prob, generator)
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x_hat = self.quantizer(x.detach())
        return self._drop(x, x + (x_hat - x).detach())

    def harden(self) -> Quantizer:
        return self.quantizer


def trainable_activation(
    quantizer: Quantizer, drop_prob: float = 0.0, generator: torch.Generator | None = None
) -> LSQActivation | FrozenActivation:
    """The trainable stand-in of an activation quantizer: LSQ when its kind trains, else frozen."""
    if quantizer.trainable and isinstance(quantizer, UniformQuantizer):
        return LSQActivation(quantizer, drop_prob, generator)
    return FrozenActivation(quantizer, drop_prob, generator)


class AdaRoundWeight(nn.Module):
    """Learned rounding of one weight tensor on a fitted uniform grid (AdaRound); ``forward()`` is the
    soft-rounded weight, ``harden()`` the hard codes as (weight on the grid, UniformQuantizer)."""

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(quantizer, UniformQuantizer):
            raise ConfigError(f"learned rounding needs a uniform weight quantizer, got {quantizer!r}")
        self.quantizer = quantizer
        w = weight.detach().to(torch.float32)
        scaled = w * quantizer.inv_scale
        self.register_buffer("floor", torch.floor(scaled))
        rest = (scaled - self.floor).clamp(1e-6, 1 - 1e-6)  # h(V) = rest, V finite
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def rectified_sigmoid(self) -> torch.Tensor:
        """h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1)."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def regularizer(self, beta: float) -> torch.Tensor:
        """Σ 1 - |2h(V) - 1|^β: zero when every h is 0 or 1."""
        return (1 - (2 * self.rectified_sigmoid() - 1).abs().pow(beta)).sum()

    def _dequantize(self, offset: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        return torch.clamp(self.floor + offset, q.code_min, q.code_max) * q.scale

    def forward(self) -> torch.Tensor:
        return self._dequantize(self.rectified_sigmoid())

    def hard_codes(self) -> torch.Tensor:
        """q - z of the hardened weight: clamp(floor(W/Δ) + [V ≥ 0], -z, 2^b - 1 - z)."""
        q = self.quantizer
        return torch.clamp(self.floor + (self.alpha.detach() >= 0).to(self.floor.dtype), q.code_min, q.code_max)

    def harden(self) -> tuple[torch.Tensor, UniformQuantizer]:
        """The hardened weight, on the grid (so the fitted quantizer gives back exactly these codes),
        and that quantizer."""
        with torch.no_grad():
            return self.hard_codes() * self.quantizer.scale, self.quantizer


class LSQWeight(nn.Module):
    """A weight and its per-output-channel uniform step, both trained (LSQ, quantization-aware
    training); ``forward()`` is the fake-quantized weight, ``harden()`` (weight on the grid,
    UniformQuantizer with the learned step). The zero point stays as calibrated."""

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(quantizer, UniformQuantizer):
            raise ConfigError(f"an LSQ weight needs a uniform weight quantizer, got {quantizer!r}")
        self.bits = quantizer.bits
        self.weight = nn.Parameter(weight.detach().to(torch.float32).clone())
        self.scale = nn.Parameter(quantizer.scale.detach().clone())
        self.register_buffer("zero_point", quantizer.zero_point.detach().clone())
        self.register_buffer("code_min", quantizer.code_min.detach().clone())
        self.register_buffer("code_max", quantizer.code_max.detach().clone())

    def forward(self) -> torch.Tensor:
        return lsq_quantize(self.weight, self.scale, self.code_min, self.code_max)

    def harden(self) -> tuple[torch.Tensor, UniformQuantizer]:
        """The weight on its grid, codes · Δ (so the returned quantizer gives back exactly these codes,
        the values training used), and the UniformQuantizer with the learned step (kept positive)."""
        with torch.no_grad():
            scale = self.scale.detach().clamp(min=torch.finfo(torch.float32).tiny)
            codes = torch.clamp(torch.round(self.weight * (1.0 / scale)), self.code_min, self.code_max)
            return codes * scale, UniformQuantizer(self.bits, scale.clone(), self.zero_point.clone())
