"""Metric-driven searches over a spec's candidate grid: brute force, alternating, and FPCS.

A spec's ``grid`` gives each search parameter (one or two: Δ and z of a uniform quantizer, base and
scale of AdaLog, ...) as candidate values ``[K, R]`` (one column per row of the point). A candidate
is one value per parameter; all rows are scored together, and each row keeps its own best when the
metric scores rows separately (per-head matmul operands), otherwise they move together.

- ``brute-force``: every combination of the grid values.
- ``alternating``: from the data-only initialisation, optimise one parameter over its whole grid with
  the others fixed, then the next, for ``rounds`` rounds (PTQ4ViT's alternating search, here between
  the parameters of one quantizer; the pipeline alternates between the operands of a matmul).
- ``fpcs``: Fast Progressive Combining Search (AdaLog, ECCV 2024). The discrete parameter (zero
  point, AdaLog's base) is scored over its grid (at most C values) with the continuous one at its
  initial value; its best C/Cb values are combined with Cb evenly spaced values of the continuous
  parameter (Ca·Cb = C = 128 by default, Cb = C/k); the top-k (16) are kept, then ``steps - 1`` times
  each kept candidate is expanded by C/k finer values of its continuous parameter around it (spacing
  δ, then δ / (C/k - 1/2) at each step) and the top-k kept again. At most C·(steps + 1) evaluations.
  With one parameter: its grid thinned to C values, then the same refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitquant.quantizers.spec import Params, QuantSpec
from vitquant.search.context import FitContext
from vitquant.search.metrics import score

_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class SearchSettings:
    """Budgets of the metric searches (AdaLog's published defaults: C = 128, top-k 16; 4 steps as
    in the paper; PTQ4ViT alternates 3 rounds)."""

    budget: int = 128
    topk: int = 16
    steps: int = 4
    rounds: int = 3


class Evaluator:
    """Scores candidate parameter sets ``{name: [K, R]}`` -> ``[K, R]``; counts evaluations."""

    def __init__(self, spec: QuantSpec, ctx: FitContext, shape: tuple[int, ...], rows: int, init: Params) -> None:
        self.spec, self.ctx, self.shape, self.rows, self.init = spec, ctx, shape, rows, init
        self.count = 0

    def __call__(self, candidates: Params) -> torch.Tensor:
        k = next(iter(candidates.values())).shape[0]
        out = torch.empty(k, self.rows, dtype=torch.float64)
        for i in range(k):
            params = self.spec.from_grid({**self.init, **{name: values[i] for name, values in candidates.items()}})
            quantizer = self.spec.build(params, self.shape)
            s = score(quantizer, self.ctx, self.spec.metric).to(torch.float64)
            out[i] = torch.where(torch.isfinite(s), s, torch.full_like(s, float("inf"))).expand(self.rows)
        self.count += k
        return out


def _pick(candidates: Params, index: torch.Tensor) -> Params:
    """Per-row selection: ``index [k, R]`` into each ``[K, R]`` candidate tensor."""
    return {name: values.gather(0, index) for name, values in candidates.items()}


def _product(grid: Params) -> Params:
    """Every combination of the grid values: ``[K1·K2·..., R]`` per parameter."""
    names = list(grid)
    sizes = [grid[n].shape[0] for n in names]
    mesh = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
    return {n: grid[n][m.reshape(-1)] for n, m in zip(names, mesh)}


def _thin(values: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced entries of a ``[K, R]`` grid (all of them if K <= count)."""
    if values.shape[0] <= count:
        return values
    return values[torch.linspace(0, values.shape[0] - 1, count).round().long()]


class _Best:
    """Running best candidate of every row."""

    def __init__(self, start: Params, start_score: torch.Tensor) -> None:
        self.params = {n: v.clone() for n, v in start.items()}
        self.score = start_score.clone()

    def update(self, candidates: Params, scores: torch.Tensor) -> None:
        s, i = scores.min(dim=0)
        better = s < self.score
        for n, v in candidates.items():
            self.params[n] = torch.where(better, v.gather(0, i.unsqueeze(0))[0], self.params[n])
        self.score = torch.where(better, s, self.score)


def _start(grid: Params, init: Params, ev: Evaluator) -> _Best:
    start = {n: init[n].to(torch.float32) for n in grid}
    return _Best(start, ev({n: v.unsqueeze(0) for n, v in start.items()})[0])


def brute_force(grid: Params, init: Params, ev: Evaluator, settings: SearchSettings) -> Params:
    best = _start(grid, init, ev)
    cands = _product(grid)
    best.update(cands, ev(cands))
    return best.params


def alternating(grid: Params, init: Params, ev: Evaluator, settings: SearchSettings) -> Params:
    best = _start(grid, init, ev)
    for _ in range(settings.rounds):
        for name, values in grid.items():
            cands = {n: (values if n == name else best.params[n].unsqueeze(0).expand_as(values)) for n in grid}
            best.update(cands, ev(cands))
    return best.params


def fpcs(grid: Params, init: Params, ev: Evaluator, settings: SearchSettings, refinable: tuple[str, ...]) -> Params:
    best = _start(grid, init, ev)
    fine = next((n for n in refinable if n in grid), None)
    coarse = [n for n in grid if n != fine]
    if fine is not None and coarse:
        # a discrete parameter (zero point, AdaLog's base) first, over its grid with the rest at their
        # initial values; its top values are then combined with a thinned grid of the continuous one
        d = coarse[0]
        cands = {n: (_thin(grid[n], settings.budget) if n == d else init[n].to(torch.float32).unsqueeze(0)) for n in grid}
        k = cands[d].shape[0]
        cands = {n: v.expand(k, -1) for n, v in cands.items()}
        scores = ev(cands)
        best.update(cands, scores)
        n_fine = min(grid[fine].shape[0], max(2, settings.budget // min(settings.topk, k)))
        kd = min(k, max(1, settings.budget // n_fine))
        top = _pick(cands, scores.topk(kd, dim=0, largest=False).indices)
        values = _thin(grid[fine], n_fine)
        cands = {n: v.repeat_interleave(n_fine, dim=0) for n, v in top.items()}
        cands[fine] = values.repeat(kd, 1)
    else:
        thinned = dict(grid)
        while _count(thinned) > settings.budget:  # halve the largest grid until C = Ca·Cb fits the budget
            name = max(thinned, key=lambda n: thinned[n].shape[0])
            thinned[name] = _thin(thinned[name], max(1, thinned[name].shape[0] // 2))
        cands = _product(thinned)
        values = thinned[fine] if fine is not None else None
    scores = ev(cands)
    best.update(cands, scores)
    if fine is None or values is None or settings.steps <= 1:
        return best.params
    delta = (values[1] - values[0]) if values.shape[0] > 1 else values[0].abs() / 8
    k = min(settings.topk, scores.shape[0])
    per = max(2, settings.budget // k)
    offsets = (torch.linspace(0, 1, per) - 0.5).reshape(1, per, 1)
    for _ in range(settings.steps - 1):
        kept = _pick(cands, scores.topk(k, dim=0, largest=False).indices)
        cands = {}
        for n, v in kept.items():
            grown = v.unsqueeze(1) + offsets * delta if n == fine else v.unsqueeze(1).expand(-1, per, -1)
            cands[n] = grown.reshape(-1, v.shape[-1])
        cands[fine] = cands[fine].clamp(min=_TINY)
        scores = ev(cands)
        best.update(cands, scores)
        k = min(settings.topk, scores.shape[0])
        delta = delta / (per - 0.5)
    return best.params


def _count(grid: Params) -> int:
    n = 1
    for v in grid.values():
        n *= v.shape[0]
    return n
