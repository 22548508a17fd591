"""What a search sees when it fits one quantization point: the :class:`FitContext`.

Built by the calibration pipeline (:mod:`vitquant.calibration.passes`) after observing the point:

- ``inputs``: everything that reached the point over all calibration batches (concatenated on dim 0);
- ``axis``: the axis of ``inputs`` whose entries get their own parameters (``None``: per tensor);
- the *consumer* (a Linear, conv or matmul) with ``operands``: its raw inputs on the search subset,
  ``operand``: which of them this point quantizes, ``others``: how to quantize the other operands as
  they currently are; ``reference``: the consumer's full-precision output on the same subset
  (from the float model), and ``grad``: dLoss/d(output) there, when a Hessian metric asked for it;
- ``output_axis``: the axis of the consumer's output that corresponds to the point's rows, when rows
  are independent there (per-head matmul operands), so each row can pick its own candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vitquant.quantizers.spec import rows_of


@dataclass
class FitContext:
    where: str
    inputs: torch.Tensor
    axis: int | None
    consume: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    operands: list[torch.Tensor] | None = None
    operand: int = 0
    others: list[Callable[[torch.Tensor], torch.Tensor]] | None = None
    reference: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    output_axis: int | None = None
    _fixed: list | None = None
    _rows: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        """``inputs`` as float32 rows ``[R, M]`` along ``axis`` (:func:`rows_of`), formed once."""
        if self._rows is None:
            self._rows = rows_of(self.inputs, self.axis)
        return self._rows

    @property
    def has_consumer(self) -> bool:
        return self.consume is not None and self.operands is not None and self.reference is not None

    def consumer_output(self, quantized: torch.Tensor) -> torch.Tensor:
        """The consumer's output with this point's operand replaced by ``quantized``."""
        assert self.consume is not None and self.operands is not None and self.others is not None
        if self._fixed is None:  # the other operands, quantized as they are, once per search
            self._fixed = [None if i == self.operand else self.others[i](x) for i, x in enumerate(self.operands)]
        return self.consume([quantized if i == self.operand else x for i, x in enumerate(self._fixed)])
