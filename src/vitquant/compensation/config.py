"""Settings of a compensation (:mod:`vitquant.compensation`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vitquant.errors import ConfigError
from vitquant.quantizers.base import check_bits


@dataclass(frozen=True)
class CompensationConfig:
    """``method``: a registered compensation (``qwt``). ``ridge``: the least-squares regulariser, relative
    to the mean diagonal of ``XᵀX`` (0: plain least squares, as the published QwT). ``bits``: width of the
    compensation Linear's weights (per output channel) and input (per tensor), both uniform."""

    method: str = "qwt"
    ridge: float = 1e-3
    bits: int = 8

    def __post_init__(self) -> None:
        if not math.isfinite(self.ridge) or self.ridge < 0:
            raise ConfigError(f"compensation ridge must be a finite number >= 0, got {self.ridge}")
        check_bits(self.bits, "compensation bits")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
