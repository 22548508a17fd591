"""Post-LayerNorm scale reparameterization (RepQ-ViT, ICCV 2023, Sec. 4.2).

The input of the Linear after a LayerNorm is first calibrated per channel c: step Δ_c, zero point z_c.
With target Δ̄ = mean(Δ_c), z̄ = round(mean(clamp(z_c, 0, 2^b-1))), r_c = Δ_c / Δ̄ and
b_c = (-z_c Δ_c) / r_c + z̄ Δ̄:

    LayerNorm:  γ_c ← γ_c / r_c,       β_c ← β_c / r_c - b_c
    Linear:     W[:, c] ← W[:, c] · r_c,   bias ← bias + W_new · b

maps every per-channel grid point (q - z_c)Δ_c onto the per-tensor grid point (q - z̄)Δ̄ with the same
integer q, so one per-tensor quantizer replaces the per-channel one, and the Linear's weights are
quantized again. Any z̄ gives an exact mapping (b absorbs it), so two changes to RepQ-ViT's plain mean
cost nothing: z̄ is rounded, making the result a true integer quantizer, and each z_c is clamped into
the code range before averaging, so that a channel whose range excludes zero by far (its z_c can be
in the millions) cannot drag every channel of the layer off the grid.

Near-constant channels (observed range below Δ̄ / 2^b; exactly constant ones, such as a LayerNorm
weight of exactly 0, included): r_c = 1 and b_c = m_c, the middle of the observed range. The channel
becomes 0 ± range/2 (0 is a grid point, since z̄ lies in the code range), which the per-tensor
quantizer maps to 0 (an error below Δ̄ / 2^(b+1)), and the next Linear's bias
absorbs W[:, c]·b_c. In float this is still an exact reparameterization; it never divides by zero,
and it avoids the float32 cancellation of y/r_c - b_c when r_c is tiny. These channels are left out
of the means.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.quantizers.spec import QuantSpec
from vitquant.quantizers.uniform import UniformQuantizer, UniformSpec
from vitquant.reparam.base import LAYERNORM_SCALE, Reparameterization, ReparamSite, register_reparam

log = logging.getLogger(__name__)


def _targets(
    delta: torch.Tensor, zero: torch.Tensor, active: torch.Tensor, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target (Δ̄, z̄) over the active channels; Δ̄ = 1, z̄ = 0 when none is active (any grid works)."""
    if not active.any():
        return torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    return delta[active].mean(), zero[active].clamp(0, qmax).mean().round()


def reparameterize_pair(pair: ReparamSite) -> None:
    """Apply the scale reparameterization to one (LayerNorm, Linear) pair in place."""
    norm, linear = pair.producer, pair.consumer
    point = linear.input_quant
    quantizer = point.quantizer
    if not isinstance(quantizer, UniformQuantizer) or not quantizer.per_channel:
        raise ConfigError(f"{pair.name}: reparameterization needs a calibrated per-channel uniform quantizer")
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        raise ConfigError(f"{pair.name}: reparameterization needs an affine LayerNorm")
    if point.observed_min is None or point.observed_max is None:
        raise ConfigError(f"{pair.name}: calibration range was not recorded")

    qmax = 2**quantizer.bits - 1
    delta = quantizer.scale.reshape(-1).double()
    zero = quantizer.zero_point.reshape(-1).double()
    lo, hi = point.observed_min.reshape(-1).double(), point.observed_max.reshape(-1).double()
    first_delta, _ = _targets(delta, zero, hi > lo, qmax)
    active = (hi > lo) & ((hi - lo) >= first_delta / 2**quantizer.bits)
    target_delta, target_zero = _targets(delta, zero, active, qmax)  # without the near-constant channels

    r = torch.where(active, delta / target_delta, torch.ones_like(delta))
    b = (-zero * delta) / r + target_zero * target_delta
    if not active.all():  # z̄ is in the code range, so 0 is a grid point: centre these channels on it
        b = torch.where(active, b, (lo + hi) / 2)
        log.info("%s: %d (near-)constant channel(s) folded into the next layer's bias", pair.name, int((~active).sum()))

    with torch.no_grad():
        weight = norm.weight.double()
        bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(weight)
        norm.weight.copy_((weight / r).float())
        new_bias = (bias / r - b).float()
        if norm.bias is None:
            norm.bias = nn.Parameter(new_bias)
        else:
            norm.bias.copy_(new_bias)

        w = linear.weight.double() * r.unsqueeze(0)
        shift = w @ b
        linear.weight.copy_(w.float())
        if linear.bias is None:
            linear.bias = nn.Parameter(shift.float())
        else:
            linear.bias.copy_((linear.bias.double() + shift).float())

    point.set_quantizer(UniformQuantizer(quantizer.bits, target_delta.float(), target_zero.float()))
    linear.quantize_weight()


class LayerNormScale(Reparameterization):
    """RepQ-ViT's post-LayerNorm scale folding, for a per-channel uniform input spec."""

    kind = LAYERNORM_SCALE
    stage = "after"

    def applies(self, site: ReparamSite, spec: QuantSpec) -> bool:
        quantizer = site.consumer.input_quant.quantizer
        per_channel = isinstance(quantizer, UniformQuantizer) and quantizer.per_channel
        if isinstance(spec, UniformSpec) and spec.granularity == "channel" and not per_channel:
            log.info("%s: input quantizer is not per-channel uniform, no reparameterization", site.name)
        return per_channel

    def apply(self, site: ReparamSite) -> None:
        reparameterize_pair(site)


register_reparam(LayerNormScale())
