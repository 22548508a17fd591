"""Post-LayerNorm scale reparameterization (RepQ-ViT, ICCV 2023, Sec. 4.2).

The input of the Linear after a LayerNorm is first calibrated per channel c: step Δ_c, zero point z_c.
With target Δ̄ = mean(Δ_c), z̄ = round(mean(z_c)), r_c = Δ_c / Δ̄ and b_c = (-z_c Δ_c) / r_c + z̄ Δ̄:

    LayerNorm:  γ_c ← γ_c / r_c,       β_c ← β_c / r_c - b_c
    Linear:     W[:, c] ← W[:, c] · r_c,   bias ← bias + W_new · b

maps every per-channel grid point (q - z_c)Δ_c onto the per-tensor grid point (q - z̄)Δ̄ with the same
integer q, so one per-tensor quantizer replaces the per-channel one, and the Linear's weights are
quantized again. RepQ-ViT keeps the mean zero point unrounded; it is rounded here so the result is a
true integer quantizer (any z̄ gives an exact mapping, since b absorbs it).

Constant channels (observed min == max == v, e.g. LayerNorm weight exactly 0): r_c = 1 and
b_c = v - g, where g is the representable point of the target grid closest to zero, so the channel
becomes the exact constant g and the next Linear's bias absorbs W[:, c]·(v - g). They are left out
of the means. This is exact and never divides by zero.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.models.adapters.base import ReparamPair
from vitquant.quantizers.uniform import UniformQuantizer

log = logging.getLogger(__name__)


def reparameterize_pair(pair: ReparamPair) -> None:
    """Apply the scale reparameterization to one (LayerNorm, Linear) pair in place."""
    norm, linear = pair.norm, pair.linear
    point = linear.input_quant
    quantizer = point.quantizer
    if not isinstance(quantizer, UniformQuantizer) or not quantizer.per_channel:
        raise ConfigError(f"{pair.name}: reparameterization needs a calibrated per-channel uniform quantizer")
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        raise ConfigError(f"{pair.name}: reparameterization needs an affine LayerNorm")
    if point.observed_min is None or point.observed_max is None:
        raise ConfigError(f"{pair.name}: calibration range was not recorded")

    delta = quantizer.scale.reshape(-1).double()
    zero = quantizer.zero_point.reshape(-1).double()
    constant = (point.observed_max == point.observed_min).reshape(-1)
    active = ~constant
    if active.any():
        target_delta = delta[active].mean()
        target_zero = zero[active].mean().round()
    else:  # every channel constant: any grid works, keep Δ̄ = 1, z̄ = 0
        target_delta, target_zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)

    r = torch.where(active, delta / target_delta, torch.ones_like(delta))
    b = (-zero * delta) / r + target_zero * target_delta
    if constant.any():
        qmax = 2**quantizer.bits - 1
        grid_near_zero = (target_zero.clamp(0, qmax) - target_zero) * target_delta
        b = torch.where(constant, point.observed_min.reshape(-1).double() - grid_near_zero, b)
        log.info("%s: %d constant channel(s) folded into the next layer's bias", pair.name, int(constant.sum()))

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


def reparameterize(pairs: list[ReparamPair]) -> int:
    """Reparameterize every pair whose Linear input has a per-channel uniform quantizer; returns the count."""
    done = 0
    for pair in pairs:
        quantizer = pair.linear.input_quant.quantizer
        if isinstance(quantizer, UniformQuantizer) and quantizer.per_channel:
            reparameterize_pair(pair)
            done += 1
        else:
            log.info("%s: input quantizer is not per-channel uniform, no reparameterization", pair.name)
    return done
