"""Re-class a timm module in place of itself: a subclass instance sharing its parameters and children."""

from __future__ import annotations

import copy

from torch import nn


def adopt(cls: type[nn.Module], module: nn.Module) -> nn.Module:
    """A new ``cls`` instance (a subclass of ``type(module)``) sharing ``module``'s parameters, buffers
    and submodules; the containers are copied, so adding a child to the new one leaves ``module`` as is."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        if key in state:
            state[key] = copy.copy(state[key])
    new.__dict__.update(state)
    return new
