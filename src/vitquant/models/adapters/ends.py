"""The two ends of a model as units of their own: the patch embedding and the classifier head.

Block reconstruction (:mod:`vitquant.reconstruction`) trains a model unit by unit; the adapters name the
transformer blocks (:meth:`~vitquant.models.adapters.base.ModelAdapter.units`) and, with these, the
parts before and after them:

- the *embedding*: images -> the first block's input, as the model's forward builds it (ViT: patch
  embedding, class/distillation tokens and position embedding, the pre-norm; Swin: patch embedding and
  its norm);
- the *head*: the last block's output -> logits (the final norm, pooling, ``fc_norm`` and the
  classifier(s); DeiT-distilled: the mean of both heads, as in evaluation).

A :class:`ModelPart` computes ``fn(x)`` with the model's own modules; those modules are its children, so
``part.modules()`` lists exactly the quantizers the part trains, while the model itself is not one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ModelPart(nn.Module):
    """``fn(x)`` over the model's ``parts`` (name -> module, shared with the model, not copied)."""

    def __init__(self, parts: dict[str, nn.Module], fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        for name, module in parts.items():
            self.add_module(name.replace(".", "_"), module)
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


def present(model: nn.Module, *names: str) -> dict[str, nn.Module]:
    """The model's children among ``names`` (absent or None ones left out)."""
    return {n: getattr(model, n) for n in names if isinstance(getattr(model, n, None), nn.Module)}
