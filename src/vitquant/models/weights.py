"""Creating a timm model with weights: a local file (safetensors or .pth state dict) or the timm hub."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from vitquant.errors import WeightsError
from vitquant.models.adapters import adapter_for
from vitquant.models.registry import resolve_model_name
from vitquant.paths import default_weights

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "model_ema")


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch checkpoint (plain or under 'model'/'state_dict')."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weights path {path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is a user-facing file problem
        raise WeightsError(
            f"cannot read weights file {path} as a safetensors file or torch checkpoint "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return obj


def create_model(name: str, weights: Path | str | None = None, download: bool = True) -> tuple[nn.Module, str]:
    """Build ``name`` in eval mode with weights; returns the model and a description of the weights' source.

    The architecture is built first and checked against the registered adapters, so an unsupported
    model fails before any download. Weights: ``weights`` if given; else the local copy in
    ``shared/models/<timm name>.safetensors`` if it exists; else timm's pretrained download (when
    ``download``).
    """
    timm_name = resolve_model_name(name)
    model = timm.create_model(timm_name, pretrained=False)
    adapter_for(model)  # raises ConfigError for unsupported families
    if weights is None and "." not in timm_name:  # the shared copies hold the default pretrained tag
        weights = default_weights(timm_name)
    if weights is not None:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            detail = "\n".join(lines[:6]) + (f"\n... ({len(lines) - 6} more lines)" if len(lines) > 6 else "")
            raise WeightsError(f"weights in {weights} do not fit {timm_name}: {detail}") from exc
        source = str(Path(weights).resolve())
    elif download:
        try:
            model = timm.create_model(timm_name, pretrained=True)  # timm's own loading path and filters
        except Exception as exc:  # network, hub and cache errors all mean: no weights
            raise WeightsError(
                f"could not download pretrained weights for {timm_name} ({type(exc).__name__}: {exc}). "
                "Without internet access pass a local state dict with --weights PATH "
                "(.safetensors or .pth)."
            ) from exc
        source = f"timm pretrained: {model.pretrained_cfg.get('hf_hub_id') or timm_name}"
    else:
        raise WeightsError(f"no weights for {timm_name}: pass --weights PATH")
    log.info("model %s with weights from %s", timm_name, source)
    return model.eval(), source
