"""Average signal-to-quantization-noise ratio (ASQNR), as the Mixed Non-linear Quantization paper defines it.

    ASQNR = 20 · log10( (1/N) Σ_i  E[x_i²] / E[(x_i - q_i)²] )

over the N images of the calibration batches, x_i the full-precision tensor of image i and q_i the
quantized model's (de-quantized) tensor at the same place. Note the published **20** (not the usual
10 for a power ratio): values are twice the usual dB figure; we keep the paper's definition so that
figures compare with it. A per-image ratio is capped at 10^12 (240 "dB") when the error is zero.
"""

from __future__ import annotations

import math

import torch

MAX_RATIO = 1e12


class ASQNRMeter:
    """Accumulates per-image ratios E[x²]/E[(x-q)²] over batches (dim 0 is the image)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, x: torch.Tensor, q: torch.Tensor) -> None:
        if x.shape != q.shape:
            raise ValueError(f"ASQNR of tensors with different shapes {tuple(x.shape)} and {tuple(q.shape)}")
        x = x.detach().double().reshape(x.shape[0], -1)
        q = q.detach().double().reshape(q.shape[0], -1)
        signal = x.pow(2).mean(dim=1)
        noise = (x - q).pow(2).mean(dim=1)
        ratio = torch.where(noise > 0, signal / noise.clamp(min=1e-300), torch.full_like(signal, MAX_RATIO))
        self.total += float(ratio.clamp(max=MAX_RATIO).sum())
        self.count += x.shape[0]

    @property
    def value(self) -> float:
        if self.count == 0:
            raise ValueError("ASQNR of no images")
        mean = self.total / self.count
        return 20.0 * math.log10(mean) if mean > 0 else -math.inf


def asqnr(x: torch.Tensor, q: torch.Tensor) -> float:
    """ASQNR of one batch."""
    meter = ASQNRMeter()
    meter.update(x, q)
    return meter.value
