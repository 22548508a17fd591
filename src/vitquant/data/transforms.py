"""Evaluation preprocessing taken from the model's own pretrained config (timm), not repeated by hand."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import timm.data
from torch import nn

from vitquant.errors import ConfigError

logger = logging.getLogger(__name__)


def check_crop_pct(crop_pct: float) -> float:
    """Validate a centre-crop fraction: a real number with ``0 < crop_pct <= 1``."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)):
        raise ConfigError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    if math.isnan(crop_pct) or not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return float(crop_pct)


def data_config(model: nn.Module, crop_pct: float | None = None) -> dict[str, Any]:
    """timm's resolved data config of ``model`` (input size, interpolation, mean/std, crop).

    ``crop_pct`` overrides the model's centre-crop fraction (e.g. 0.875 = resize 256, crop 224).
    """
    cfg = dict(timm.data.resolve_data_config({}, model=model))
    if crop_pct is not None:
        cfg["crop_pct"] = check_crop_pct(crop_pct)
    logger.debug("data config: %s", cfg)
    return cfg


def eval_transform(model: nn.Module, crop_pct: float | None = None) -> Callable[..., Any]:
    """The deterministic evaluation transform (PIL image -> normalized CHW float tensor) of ``model``."""
    return timm.data.create_transform(**data_config(model, crop_pct), is_training=False)
