"""Explicit quantization points and the model-wide quantization mode.

A :class:`QuantPoint` sits where an activation enters a Linear layer or a matmul. Its behaviour is set
by the calibration pipeline, never by itself:

- ``Mode.FLOAT``: identity (the full-precision model);
- ``Mode.CALIBRATE``: fit its spec on the incoming tensor (the observer step), record the data range,
  then fake-quantize, so downstream points calibrate on quantized inputs (as RepQ-ViT does);
- ``Mode.QUANTIZE``: fake-quantize with the fitted quantizer.

With ``track_levels`` on, it also counts which codes were used (for level reports).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import torch
from torch import nn

from vitquant.qconfig import QuantSpec
from vitquant.quantizers.base import Quantizer
from vitquant.search.percentile_mse import channel_rows


class Mode(enum.Enum):
    FLOAT = "float"
    CALIBRATE = "calibrate"
    QUANTIZE = "quantize"


class QuantPoint(nn.Module):
    """One activation quantization point with a role (see :mod:`vitquant.qconfig`)."""

    def __init__(self, role: str, channel_dim: int | None = -1) -> None:
        super().__init__()
        self.role = role
        self.channel_dim = channel_dim  # channel axis used when the spec is per-channel
        self.point_name = ""  # module path, set when the model is prepared
        self.spec: QuantSpec | None = None
        self.quantizer: Quantizer | None = None
        self.mode = Mode.FLOAT
        self.track_levels = False
        self.register_buffer("level_counts", None, persistent=False)
        self.register_buffer("observed_min", None)  # per channel when the spec is per-channel
        self.register_buffer("observed_max", None)

    def calibrate(self, x: torch.Tensor) -> None:
        """Fit the spec on ``x`` and record its range (per channel for per-channel specs)."""
        if self.spec is None:
            raise RuntimeError(f"quantization point {self.point_name or self.role} has no spec")
        self.quantizer = self.spec.fit(x, self.channel_dim, where=self.point_name or self.role)
        if self.spec.per_channel and self.channel_dim is not None:
            rows = channel_rows(x, self.channel_dim)
            self.observed_min, self.observed_max = rows.amin(dim=1), rows.amax(dim=1)
        else:
            self.observed_min, self.observed_max = torch.aminmax(x.detach())

    def set_quantizer(self, quantizer: Quantizer) -> None:
        """Replace the fitted quantizer (used by reparameterization)."""
        self.quantizer = quantizer
        self.level_counts = None

    def _count_levels(self, x: torch.Tensor) -> None:
        assert self.quantizer is not None
        counts = torch.bincount(self.quantizer.codes(x).reshape(-1), minlength=self.quantizer.max_levels)
        self.level_counts = counts if self.level_counts is None else self.level_counts + counts

    @property
    def levels_used(self) -> int | None:
        return None if self.level_counts is None else int((self.level_counts > 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.FLOAT:
            return x
        if self.mode is Mode.CALIBRATE:
            self.calibrate(x)
        if self.quantizer is None:
            raise RuntimeError(f"quantization point {self.point_name or self.role} is not calibrated")
        if self.track_levels:
            self._count_levels(x)
        return self.quantizer(x)

    def extra_repr(self) -> str:
        spec = self.spec.name if self.spec else "unset"
        return f"role={self.role}, spec={spec}, mode={self.mode.value}"


def quant_points(model: nn.Module) -> Iterator[tuple[str, QuantPoint]]:
    """Every (name, point) of a prepared model."""
    for name, module in model.named_modules():
        if isinstance(module, QuantPoint):
            yield name, module


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Set the mode of every quantization point and quantized layer of ``model``."""
    for module in model.modules():
        if hasattr(module, "mode") and isinstance(getattr(module, "mode"), Mode):
            module.mode = mode


def set_level_tracking(model: nn.Module, enabled: bool) -> None:
    """Start (reset counts) or stop counting the codes used at every quantization point."""
    for _, point in quant_points(model):
        point.track_levels = enabled
        if enabled:
            point.level_counts = None
