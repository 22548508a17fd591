"""AdaLog's post-GELU bias reparameterization (ECCV 2024, Eq. 15).

GELU's output lies in [-c, ∞) with c = -min GELU = 0.16997124254703522. A log quantizer needs a
non-negative input, so the activation becomes ``GELU(x) + c`` and the next Linear absorbs the shift:

    y = Ŵ·g + b = Ŵ·(g + c·1) + (b - c·Ŵ·1)

The Linear keeps c (``input_shift``) and computes ``b - c·Ŵ·1`` from the weight it uses at that moment
(float, de-quantized, or a weight-search candidate), never a snapshot baked into its bias: a weight
quantizer fitted after the shift (AdaLog's FPCS weight search) keeps the rewrite exact before the
input is quantized. It applies when the Linear's input spec is non-negative only (the log formats); twin-uniform and uniform
quantize negative values themselves.
"""

from __future__ import annotations

from torch import nn

from vitquant.errors import ConfigError
from vitquant.nn.shift import ShiftedActivation
from vitquant.quantizers.spec import QuantSpec
from vitquant.quantizers.twin_uniform import GELU_MIN_ABS
from vitquant.reparam.base import ACTIVATION_SHIFT, Reparameterization, ReparamSite, register_reparam


class ActivationShift(Reparameterization):
    kind = ACTIVATION_SHIFT
    stage = "before"

    def applies(self, site: ReparamSite, spec: QuantSpec) -> bool:
        return spec.nonnegative

    def apply(self, site: ReparamSite) -> None:
        act = getattr(site.producer, site.attr, None)
        if not isinstance(act, nn.GELU):
            raise ConfigError(f"{site.name}: the activation shift is defined for GELU, got {type(act).__name__}")
        site.consumer.input_shift += GELU_MIN_ABS  # its bias correction follows the weight in use
        setattr(site.producer, site.attr, ShiftedActivation(act, GELU_MIN_ABS))


register_reparam(ActivationShift())
