"""How a candidate quantizer is judged: the error of the consumer's output against full precision.

Each metric returns one score per row of the point (``[R]``) when the consumer's output keeps the
rows apart (``FitContext.output_axis``), else one score broadcast to every row. Lower is better.

- ``mse``: mean (y - y_fp)² of the consumer output (AdaLog's FPCS objective);
- ``cosine``: 1 - cosine similarity of y and y_fp along the output's last axis, averaged;
- ``hessian``: mean (g ⊙ (y - y_fp))², g = dL/dy of the float model, L the cross-entropy against its
  own prediction (PTQ4ViT's Hessian-guided metric, a diagonal Gauss-Newton approximation as in BRECQ).

Without a consumer (weights, or a point fitted alone) the point's own input stands in for the output:
the metric then compares x̂ with x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer
from vitquant.search.context import FitContext

Metric = Callable[[torch.Tensor, torch.Tensor, FitContext], torch.Tensor]


def _reduce(err: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Mean of ``err`` over everything but ``axis`` -> ``[R]`` (``[1]`` when axis is None)."""
    if axis is None:
        return err.mean().reshape(1)
    return err.movedim(axis, 0).reshape(err.shape[axis], -1).mean(dim=1)


def mse(out: torch.Tensor, ref: torch.Tensor, ctx: FitContext) -> torch.Tensor:
    return _reduce((out - ref).square(), ctx.output_axis)


def cosine(out: torch.Tensor, ref: torch.Tensor, ctx: FitContext) -> torch.Tensor:
    sim = F.cosine_similarity(out, ref, dim=-1, eps=1e-12)
    axis = ctx.output_axis
    if axis is not None and axis % out.dim() == out.dim() - 1:
        raise ConfigError("the cosine metric needs rows on an axis other than the last")
    return _reduce(1.0 - sim.unsqueeze(-1), axis)


def hessian(out: torch.Tensor, ref: torch.Tensor, ctx: FitContext) -> torch.Tensor:
    if ctx.grad is None:
        raise ConfigError(f"{ctx.where}: the hessian metric needs output gradients (collected by the pipeline)")
    return _reduce((ctx.grad * (out - ref)).square(), ctx.output_axis)


METRICS: dict[str, Metric] = {"mse": mse, "cosine": cosine, "hessian": hessian}


def score(quantizer: Quantizer, ctx: FitContext, metric: str) -> torch.Tensor:
    """Score of ``quantizer`` at the point described by ``ctx`` (``[R]`` or ``[1]``)."""
    fn = METRICS[metric]
    if ctx.has_consumer:
        assert ctx.operands is not None and ctx.reference is not None
        out = ctx.consumer_output(quantizer(ctx.operands[ctx.operand]))
        return fn(out, ctx.reference, ctx)
    if metric == "hessian":
        raise ConfigError(f"{ctx.where}: the hessian metric needs a consumer output")
    self_ctx = FitContext(ctx.where, ctx.inputs, ctx.axis, output_axis=ctx.axis)
    return fn(quantizer(ctx.inputs), ctx.inputs, self_ctx)
