"""The evaluation transform from a stored data config, with torchvision only (no timm).

A saved integer program records its model's data config (timm's resolved ``input_size``,
``interpolation``, ``mean``, ``std``, ``crop_pct``); this rebuilds timm's evaluation transform from it:
resize the shorter side to ``floor(size / crop_pct)``, centre-crop ``size``, to tensor, normalize
(tests check it equals timm's on real images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torchvision import transforms as T

from vitquant.errors import ConfigError

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def transform_from_config(cfg: dict[str, Any]) -> Callable[..., Any]:
    try:
        _, height, width = cfg["input_size"]
        interpolation = _INTERPOLATION[cfg.get("interpolation", "bilinear")]
        mean, std, crop_pct = cfg["mean"], cfg["std"], float(cfg["crop_pct"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"incomplete or unsupported data config {cfg!r} ({exc!r})") from exc
    if height != width or cfg.get("crop_mode", "center") != "center":
        raise ConfigError(f"only square centre crops are supported, got {cfg!r}")
    return T.Compose([
        T.Resize(math.floor(height / crop_pct), interpolation=interpolation),
        T.CenterCrop(height),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
