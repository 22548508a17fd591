"""Rotation of the residual stream before calibration: a full-precision model with the same function
whose residual stream and weights quantize better (GLF-Q 2026; QuaRot, SpinQuant for LLMs).

``rotate(model, method, seed)`` returns a rotated copy; methods are registered by name
(:data:`ROTATIONS`): ``hadamard`` (a randomised Hadamard rotation, :mod:`vitquant.rotation.hadamard`)
and ``orthogonal`` (a seeded random orthogonal one). The model-specific part is
:func:`vitquant.rotation.vit.rotate_vit`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitquant.errors import ConfigError
from vitquant.rotation.hadamard import ROTATIONS, hadamard, rotation
from vitquant.rotation.vit import rotate_vit

__all__ = ["ROTATIONS", "hadamard", "rotate", "rotate_vit", "rotation"]


def rotate(model: nn.Module, method: str = "hadamard", seed: int = 0) -> tuple[nn.Module, str]:
    """A copy of ``model`` with its residual stream rotated by ``method`` (seeded), and the construction
    used (``hadamard`` falls back to ``orthogonal`` where no Hadamard matrix of the width is known)."""
    width = getattr(model, "embed_dim", None)
    if not isinstance(width, int):
        raise ConfigError(f"residual rotation supports timm VisionTransformer (ViT, DeiT) models, got {type(model).__name__}")
    q, used = rotation(width, method, seed)  # an unknown method is refused there
    rotated = rotate_vit(copy.deepcopy(model).eval(), q)
    _check_same_function(model, rotated)
    return rotated, used


def _check_same_function(model: nn.Module, rotated: nn.Module) -> None:
    """The rotated model's logits on two random images equal the model's up to float error (1e-3 of their
    scale); otherwise the model has a part the rotation does not know, and that is an error."""
    size = model.patch_embed.img_size or (224, 224)
    param = next(model.parameters())
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    was = model.training
    model.eval()
    with torch.no_grad():
        before, after = model(x), rotated(x)
    model.train(was)
    if not torch.allclose(after, before, rtol=0.0, atol=1e-3 * float(before.abs().max()) + 1e-6):
        raise ConfigError(f"residual rotation changed {type(model).__name__}'s logits (max difference "
                          f"{float((after - before).abs().max()):.3g}): it has a part the rotation does not handle")
