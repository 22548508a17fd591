"""Observation passes: a model run on batches with forward hooks installed for the duration."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple, Any], None]


def run_hooked(model: nn.Module, batches: Sequence[torch.Tensor], hooks: Iterable[tuple[nn.Module, ForwardHook]]) -> None:
    """Run ``model`` on every batch without gradients, each (module, hook) registered as a forward hook
    meanwhile (removed afterwards, also on an error)."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
