"""Explicit quantization points and the model-wide quantization mode.

A :class:`QuantPoint` sits where an activation enters a Linear layer or a matmul. It does not fit
itself: the calibration pipeline (:mod:`vitquant.calibration`) observes its input, runs the spec's
search and installs the fitted quantizer with :meth:`QuantPoint.set_quantizer`. Its mode, also set
by the pipeline:

- ``Mode.FLOAT``: identity (the full-precision model, and points not yet fitted during calibration);
- ``Mode.QUANTIZE``: fake-quantize with the fitted quantizer.

With ``track_levels`` on, it also counts which codes were used (for level reports), for formats of at
most :data:`LEVEL_COUNT_LIMIT` levels (a 24-bit residual point reports ``levels_used`` None).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import torch
from torch import nn

from vitquant.quantizers.base import Quantizer
from vitquant.quantizers.spec import QuantSpec


LEVEL_COUNT_LIMIT = 2**16  # wider formats are not histogrammed


class Mode(enum.Enum):
    FLOAT = "float"
    QUANTIZE = "quantize"


class QuantPoint(nn.Module):
    """One activation quantization point with a role (see :mod:`vitquant.qconfig`).

    ``channel_dim`` and ``head_dim`` are the axes a per-channel or per-head spec takes its rows from
    (``None``: the granularity is not available at this point).
    """

    def __init__(self, role: str, channel_dim: int | None = -1, head_dim: int | None = None) -> None:
        super().__init__()
        self.role = role
        self.channel_dim = channel_dim
        self.head_dim = head_dim
        self.point_name = ""  # module path, set when the model is prepared
        self.spec: QuantSpec | None = None
        self.quantizer: Quantizer | None = None
        self.mode = Mode.FLOAT
        self.track_levels = False
        self.register_buffer("level_counts", None, persistent=False)
        self.register_buffer("observed_min", None)  # per row of the spec's granularity
        self.register_buffer("observed_max", None)

    def axis(self, granularity: str) -> int | None:
        """The axis whose entries get their own parameters under ``granularity``."""
        if granularity == "tensor":
            return None
        axis = self.channel_dim if granularity == "channel" else self.head_dim
        if axis is None:
            from vitquant.errors import ConfigError

            raise ConfigError(f"quantization point {self.point_name or self.role} has no {granularity} axis")
        return axis

    def set_quantizer(self, quantizer: Quantizer) -> None:
        """Install a fitted quantizer (by the calibration pipeline or a reparameterization)."""
        self.quantizer = quantizer
        self.level_counts = None

    def _count_levels(self, x: torch.Tensor) -> None:
        assert self.quantizer is not None
        if self.quantizer.max_levels > LEVEL_COUNT_LIMIT:
            return
        counts = torch.bincount(self.quantizer.codes(x).reshape(-1), minlength=self.quantizer.max_levels)
        self.level_counts = counts if self.level_counts is None else self.level_counts + counts

    @property
    def levels_used(self) -> int | None:
        return None if self.level_counts is None else int((self.level_counts > 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.FLOAT:
            return x
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
