"""Input checks shared by every search: calibration data must be finite and non-empty."""

from __future__ import annotations

import torch

from vitquant.errors import NumericalError


def check_calibration_tensor(x: torch.Tensor, where: str) -> None:
    """Raise :class:`NumericalError` for empty tensors or NaN/inf values, naming ``where``."""
    if x.numel() == 0:
        raise NumericalError(f"{where}: empty calibration tensor")
    lo, hi = torch.aminmax(x.detach())  # one pass; NaN propagates into both
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise NumericalError(f"{where}: {bad} of {x.numel()} calibration values are NaN or inf")
