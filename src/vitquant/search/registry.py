"""Searches and metrics by name, and :func:`fit_point`: one quantization point, one fitted quantizer.

Searches: ``percentile`` (each format's data-only rule: RepQ-ViT percentile/MSE, BitLog2 closed form,
...), ``brute-force``, ``alternating``, ``fpcs`` (:mod:`vitquant.search.grid_search`). Metrics:
``mse``, ``cosine``, ``hessian`` (:mod:`vitquant.search.metrics`). A spec names one of each.
"""

from __future__ import annotations

from collections.abc import Callable

from vitquant.errors import ConfigError
from vitquant.quantizers.base import Quantizer
from vitquant.quantizers.spec import Params, QuantSpec, param_shape
from vitquant.search import grid_search
from vitquant.search.checks import check_calibration_tensor
from vitquant.search.context import FitContext
from vitquant.search.grid_search import Evaluator, SearchSettings

GridSearch = Callable[[QuantSpec, Params, Params, Evaluator, SearchSettings], Params]

SEARCHES: dict[str, GridSearch | None] = {
    "percentile": None,  # the format's own data-only initialisation
    "brute-force": lambda spec, grid, init, ev, s: grid_search.brute_force(grid, init, ev, s),
    "alternating": lambda spec, grid, init, ev, s: grid_search.alternating(grid, init, ev, s),
    "fpcs": lambda spec, grid, init, ev, s: grid_search.fpcs(grid, init, ev, s, spec.refinable),
}
METRIC_NAMES = ("mse", "cosine", "hessian")


def check_search(name: str) -> str:
    if name not in SEARCHES:
        raise ConfigError(f"unknown search {name!r}; choose one of {', '.join(SEARCHES)}")
    return name


def check_metric(name: str) -> str:
    if name not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    return name


def needs_consumer(spec: QuantSpec) -> bool:
    """Whether fitting ``spec`` needs the consumer's full-precision output (a metric search)."""
    return spec.search_name != "percentile"


def scores_output(spec: QuantSpec) -> bool:
    """Whether ``spec``'s search scores candidates on the consumer's output (not the point's own input)."""
    return needs_consumer(spec) and spec.objective == "output"


def fit_point(spec: QuantSpec, ctx: FitContext, settings: SearchSettings | None = None) -> tuple[Quantizer, int]:
    """Run ``spec``'s search at one point; returns the quantizer and the number of evaluations."""
    check_calibration_tensor(ctx.inputs, ctx.where)
    rows = ctx.rows()
    spec.check_input(rows, ctx.where)
    shape = param_shape(ctx.inputs.shape, ctx.axis)
    init = spec.initialize(rows, ctx.where)
    search = SEARCHES[spec.search_name]
    if search is None:
        return spec.build(init, shape), 0
    evaluator = Evaluator(spec, ctx, shape, rows.shape[0], init)
    params = search(spec, spec.grid(rows, init), init, evaluator, settings or SearchSettings())
    return spec.build(spec.from_grid({**init, **params}), shape), evaluator.count
