"""The calibration pipeline: model + calibration images -> quantized model + report.

Explicit stages, each a function of the model and the data (no fitting inside ``forward``):

1. prepare: the family adapter makes every quantization point explicit; the QConfig assigns specs;
2. quantize all weights (per output channel: the data-only rule, or with ``QConfig.weight_init``
   "search" the weight spec's search on the weight's own error);
3. fit the activation points consumer by consumer in network order (:mod:`vitquant.calibration.passes`):
   "before" reparameterizations of the consumer (AdaLog's post-GELU shift), an observation pass over
   every calibration batch, a float reference pass on the search images when the spec's search
   scores candidates by the consumer's output, then the spec's search (:func:`fit_point`); later
   points see the quantized outputs of earlier ones (``QConfig.inputs`` "sequential"; "parallel":
   every point sees full-precision inputs). At a consumer whose weight is searched: its
   "after" reparameterizations first (the folded input may then be searched again per tensor,
   ``QConfig.refit_after_reparam``), then the weight, alternating with the inputs
   ``QConfig.weight_rounds`` times. With one calibration batch and nothing that needs another pass
   (no "before" reparameterization, no float reference, no fold at a searched weight) the same fits run
   in **one forward**: each consumer's points are fitted by a pre-hook when its inputs arrive, which
   sees exactly what its observation pass would see (:meth:`_Fitter.fits_in_one_pass`);
4. "after" reparameterizations (RepQ-ViT: per-channel post-LayerNorm quantizers folded into the
   LayerNorm and the next Linear, whose weights are quantized again);
5. switch to ``Mode.QUANTIZE`` and count the levels every point really uses on the calibration images.

The float model passed in is left untouched; the quantized model is a copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vitquant.calibration.passes import Consumer, UnitCache, collect_output_grads, consumers_in_order, is_consumer
from vitquant.errors import DataError, NumericalError
from vitquant.models.adapters import adapter_for
from vitquant.kernels.base import make_kernel
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.nonlinear import KERNEL_INPUT_ROLES, QuantNonLinear
from vitquant.nonlinear.config import input_spec
from vitquant.nonlinear.mixed import NonlinearReport, apply_choices, choose, kernel_layers, measure
from vitquant.nn.quant_point import Mode, QuantPoint, quant_points, set_level_tracking, set_mode
from vitquant.nn.residual import RESIDUAL, QuantResidualAdd
from vitquant.qconfig import POST_SOFTMAX, QConfig
from vitquant.quantizers.spec import QuantSpec, make_spec, param_shape
from vitquant.quantizers.summary import summarize_state
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.reparam import ReparamSite, reparam_for
from vitquant.search.context import FitContext
from vitquant.search.registry import fit_point, needs_consumer, scores_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointReport:
    """What one quantization point does: its spec, its level bound, the levels it used and its fitted
    parameters (``params``: :func:`~vitquant.quantizers.summary.summarize_state` of its quantizer)."""

    name: str
    role: str
    quantizer: str
    bits: int
    max_levels: int
    levels_used: int | None
    search: str = "percentile"
    metric: str | None = None
    evaluations: int = 0
    search_seconds: float = 0.0
    params: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)


@dataclass
class CalibrationResult:
    """The quantized model and what calibration did."""

    model: nn.Module
    qconfig: QConfig
    images: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reparameterized: int = 0
    reparameterizations: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    points: list[PointReport] = field(default_factory=list)
    # stage 3 split: forward passes (observation, reference, gradient) and the fits (searches) between them
    activation_seconds: dict[str, float] = field(default_factory=dict)
    nonlinear: NonlinearReport | None = None  # kernel layers: per-layer SQNR table and choices

    def search_seconds_by_role(self) -> dict[str, float]:
        """Seconds the searches took, summed per role (observation passes not included)."""
        out: dict[str, float] = {}
        for p in self.points:
            out[p.role] = out.get(p.role, 0.0) + p.search_seconds
        return out

    def role_summary(self, role: str) -> dict[str, Any]:
        """Bound and used levels over all points of one role (e.g. post_softmax)."""
        rows = [p for p in self.points if p.role == role]
        used = [p.levels_used for p in rows if p.levels_used is not None]
        return {
            "points": len(rows),
            "quantizer": sorted({p.quantizer for p in rows}),
            "max_levels": max((p.max_levels for p in rows), default=0),
            "levels_used_min": min(used, default=0),
            "levels_used_max": max(used, default=0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "reparameterized_layers": self.reparameterized,
            "reparameterizations": self.reparameterizations,
            "passes": self.passes,
            "activation_seconds": self.activation_seconds,
            "attention_levels": self.role_summary(POST_SOFTMAX),
            "points": [p.to_dict() for p in self.points],
            "nonlinear": None if self.nonlinear is None else self.nonlinear.to_dict(),
        }


def check_images(images: torch.Tensor, what: str = "calibration images") -> None:
    """A non-empty, finite float batch ``[N, 3, H, W]``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{what} must be a float tensor [N, 3, H, W], got {shape}")
    if images.shape[0] == 0:
        raise DataError(f"{what}: empty calibration set (0 images)")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise NumericalError(f"{what} must be finite floating-point values")


def prepare(model: nn.Module, qconfig: QConfig) -> nn.Module:
    """Make the quantization points of ``model`` explicit (in place) and give each its spec; give the
    non-linear modules their kernels (one per family the config asks for there, none: float) and
    the residual adds their fixed-point point where the config makes them integer."""
    adapter_for(model).prepare(model)
    nonlinear = qconfig.nonlinear
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantNonLinear):
            module.layer_name = name
            kernels = {f: make_kernel(f, module.op, **nonlinear.kernel_options(f, module.op))
                       for f in nonlinear.families_for(name, module.op)}
            module.set_kernels(kernels, {f: nonlinear.input_spec(k.input_format) for f, k in kernels.items()})
        elif isinstance(module, QuantResidualAdd):
            module.layer_name = name
            if nonlinear.integer_residual(name):
                module.set_spec(make_spec("fixed_point", bits=nonlinear.residual_bits))
        elif isinstance(module, WeightQuantMixin):
            module.layer_name = name
            module.weight_spec = qconfig.spec_for(f"{name}.weight", module.weight_role)
    for name, point in quant_points(model):
        point.point_name = name
        if point.role not in (*KERNEL_INPUT_ROLES, RESIDUAL):  # spec set with the kernel or the add
            point.spec = qconfig.spec_for(name, point.role)
    return model


def _weight_reports(model: nn.Module, evaluations: dict[str, tuple[int, float]]) -> list[PointReport]:
    reports = []
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantMixin) and module.weight_quantizer is not None:
            quantizer = module.weight_quantizer
            reports.append(
                PointReport(
                    name=f"{name}.weight",
                    role=module.weight_role,
                    quantizer=module.weight_spec.name if module.weight_spec else "?",
                    bits=quantizer.bits,
                    max_levels=quantizer.max_levels,
                    levels_used=quantizer.levels_used(module.weight.detach()),
                    search=module.weight_spec.search_name if module.weight_spec else "percentile",
                    metric=module.weight_spec.metric if module.weight_spec and needs_consumer(module.weight_spec) else None,
                    evaluations=evaluations.get(f"{name}.weight", (0, 0.0))[0],
                    search_seconds=evaluations.get(f"{name}.weight", (0, 0.0))[1],
                    params=summarize_state(quantizer.state()),
                )
            )
    return reports


def _quantizer_name(point: QuantPoint) -> str:
    """The spec's name, marking per-channel points made per-tensor by reparameterization."""
    assert point.spec is not None
    if point.spec.granularity == "channel" and isinstance(point.quantizer, UniformQuantizer) and not point.quantizer.per_channel:
        return "uniform (per-tensor after reparam)"
    return point.spec.name


def _point_reports(model: nn.Module, evaluations: dict[str, tuple[int, float]]) -> list[PointReport]:
    reports = []
    for name, point in quant_points(model):
        if point.quantizer is None or point.spec is None:
            continue
        spec = point.spec
        reports.append(
            PointReport(
                name=name,
                role=point.role,
                quantizer=_quantizer_name(point),
                bits=point.quantizer.bits,
                max_levels=point.quantizer.max_levels,
                levels_used=point.levels_used,
                search=spec.search_name,
                metric=spec.metric if needs_consumer(spec) else None,
                evaluations=evaluations.get(name, (0, 0.0))[0],
                search_seconds=evaluations.get(name, (0, 0.0))[1],
                params=summarize_state(point.quantizer.state()),
            )
        )
    return reports


def point_reports(model: nn.Module, evaluations: dict[str, tuple[int, float]]) -> list[PointReport]:
    """Every quantized weight, then every fitted activation point, with ``evaluations``
    (name -> (candidates scored, search seconds)) and the levels last counted (:func:`count_levels`)."""
    return _weight_reports(model, evaluations) + _point_reports(model, evaluations)


def count_levels(qmodel: nn.Module, batches: Sequence[torch.Tensor], what: str = "calibration images") -> None:
    """Count the codes every point uses on ``batches`` (``QuantPoint.levels_used``); NaN/inf logits raise."""
    set_level_tracking(qmodel, True)
    try:
        with torch.no_grad():
            for images in batches:
                logits = qmodel(images)
                if not torch.isfinite(logits).all():
                    raise NumericalError(f"the quantized model produced NaN/inf logits on the {what}")
    finally:
        set_level_tracking(qmodel, False)


def recount(
    calibrated: CalibrationResult, qmodel: nn.Module, batches: Sequence[torch.Tensor], what: str
) -> CalibrationResult:
    """``calibrated`` for a changed copy of its model (reconstructed, trained): the levels counted again
    on ``batches`` and every point reported anew, keeping the searches' costs."""
    count_levels(qmodel, batches, what)
    evaluations = {p.name: (p.evaluations, p.search_seconds) for p in calibrated.points}
    return replace(calibrated, model=qmodel, points=point_reports(qmodel, evaluations))


def fingerprint_points(model: nn.Module) -> list[tuple[str, Any, list[int] | None]]:
    """(name, fitted quantizer, histogram of codes used) for every weight and activation point."""
    rows: list[tuple[str, Any, list[int] | None]] = []
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantMixin) and module.weight_quantizer is not None:
            q = module.weight_quantizer
            counts = torch.bincount(q.codes(module.weight.detach()).reshape(-1), minlength=q.max_levels)
            rows.append((f"{name}.weight", q, counts.tolist()))
    for name, point in quant_points(model):
        if point.quantizer is not None:
            counts = None if point.level_counts is None else point.level_counts.tolist()
            rows.append((name, point.quantizer, counts))
    return rows


def calibration_batches(images: torch.Tensor | Sequence[torch.Tensor], search_images: int) -> list[torch.Tensor]:
    """The calibration set as batches, the first batch holding at least the ``search_images`` images
    the metric searches score on (a single tensor stays one batch)."""
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    if not batches:
        raise DataError("calibration images: empty calibration set (no batches)")
    for b in batches:
        check_images(b)
    shapes = {tuple(b.shape[1:]) for b in batches}
    if len(shapes) > 1:
        raise DataError(f"calibration batches have different image shapes: {sorted(shapes)}")
    if batches[0].shape[0] < search_images and len(batches) > 1:
        merged = torch.cat(batches)
        rest = merged[search_images:]
        batches = [merged[:search_images], *(rest.split(max(b.shape[0] for b in batches)) if len(rest) else ())]
    return batches


def _point_input(observed: list[tuple], index: int | tuple[int, ...]) -> torch.Tensor:
    """What a point is fitted on: operand ``index`` of every observed batch (several operands: all of
    them, stacked along the batch axis)."""
    indices = index if isinstance(index, tuple) else (index,)
    parts = [ops[i] for i in indices for ops in observed]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _specs(consumer: Consumer) -> list:
    """The specs fitted at a consumer: its input points' and, for a layer, its weight's."""
    specs = [p.spec for p in consumer.points if p.spec is not None]
    weight = getattr(consumer.module, "weight_spec", None)
    return specs + ([weight] if weight is not None else [])


class _Fitter:
    """Fits the activation points of a prepared model, consumer by consumer (stage 3)."""

    def __init__(self, qmodel: nn.Module, float_model: nn.Module, batches: list[torch.Tensor], qconfig: QConfig) -> None:
        self.qmodel, self.qconfig, self.batches = qmodel, qconfig, batches
        adapter = adapter_for(qmodel)
        self.units = adapter.units(qmodel)
        self.cache = UnitCache(self.units)
        self.sites = adapter.reparam_sites(qmodel)
        # every consumer with points; in network order (a forward on one image) only if passes fit them
        self.consumers = [Consumer(n, m, -1) for n, m in qmodel.named_modules() if is_consumer(m) and m.input_points()]
        self.search_images = min(qconfig.search_images, batches[0].shape[0])
        metric_specs = [s for c in self.consumers for s in _specs(c) if needs_consumer(s)]
        self.grads: dict[str, torch.Tensor] = {}
        self.evaluations: dict[str, tuple[int, float]] = {}  # point -> (candidates scored, search seconds)
        self.passes = 0
        self.pass_seconds = 0.0  # time in forward passes (the rest of stage 3 is fitting)
        self.activation_seconds: dict[str, float] = {}  # stage 3 split into passes and searches (set by _calibrate)
        self.reparameterizations: dict[str, int] = {}
        self.applied: set[int] = set()  # sites already rewritten
        self.float_model: nn.Module | None = None
        hessian = {c.name for c in self.consumers for s in _specs(c) if needs_consumer(s) and s.metric == "hessian"}
        if metric_specs and (qconfig.reference == "float" or hessian):  # a prepared copy with every point off
            self.float_model = prepare(copy.deepcopy(float_model).eval(), qconfig)
            self.float_model.requires_grad_(False)
            set_mode(self.float_model, Mode.FLOAT)
            self.float_cache = UnitCache(adapter.units(self.float_model))
            self.float_modules = dict(self.float_model.named_modules())
            self.search_batch = [batches[0][: self.search_images]]
            if hessian:
                with self._timed_pass():
                    self.grads = collect_output_grads(self.float_model, self.search_batch[0], hessian)
                self.passes += 1
        self.one_pass = self.fits_in_one_pass()
        if not self.one_pass:
            with self._timed_pass():
                self.consumers = consumers_in_order(qmodel, self.units, batches[0][:1])

    def run(self, progress: bool = False) -> None:
        bar = tqdm(total=len(self.consumers), desc="calibrating", unit="layer", disable=not progress, leave=False)
        try:
            if self.one_pass:
                self._run_one_pass(bar.update)
            else:
                for consumer in self.consumers:
                    self._fit_consumer(consumer)
                    bar.update()
        finally:
            bar.close()

    def fits_in_one_pass(self) -> bool:
        """Whether one forward that fits each consumer's points when its inputs arrive gives what the
        consumer-by-consumer passes give: one batch, inputs "sequential", no float reference passes, and no
        reparameterization that would change an input after that forward computed it (a "before" one,
        or an "after" fold at a consumer whose weight is searched, which is observed again). An integer
        softmax reads q·kᵀ through ``QuantMatMul.products``, which runs the matmul's pre-hooks first, so
        its points are fitted before they are read."""
        if len(self.batches) != 1 or self.qconfig.inputs != "sequential":
            return False
        if self.float_model is not None and self.qconfig.reference == "float":
            return False
        searched = {id(c.module) for c in self.consumers if self._weight_searched(c)}
        return not any(
            self._site_applies(site) and (reparam_for(site).stage == "before" or id(site.consumer) in searched)
            for site in self.sites
        )

    def _run_one_pass(self, done: Callable[[], object]) -> None:
        """Stage 3 in one forward of the single batch: a pre-hook on every consumer fits its points (and
        its weight) on the operands as they arrive, before the consumer uses them; later consumers then
        see its quantized outputs, as they would in their own observation passes."""
        consumers = {id(c.module): c for c in self.consumers}
        order: list[Consumer] = []  # network order, as the forward reaches them
        fit_seconds = 0.0

        def pre_hook(module: nn.Module, args: tuple) -> None:
            nonlocal fit_seconds
            if any(c.module is module for c in order):  # a module called twice: fitted on its first call, as by a pass
                return
            order.append(consumers[id(module)])
            start = time.perf_counter()
            self._fit_consumer(consumers[id(module)], arrived=tuple(a.detach() for a in args))
            fit_seconds += time.perf_counter() - start
            done()

        handles = [c.module.register_forward_pre_hook(pre_hook) for c in self.consumers]
        start = time.perf_counter()
        try:
            with torch.no_grad():
                self.qmodel(self.batches[0])
        finally:
            for handle in handles:
                handle.remove()
        self.pass_seconds += time.perf_counter() - start - fit_seconds
        self.passes += 1
        missing = sorted({c.name for c in self.consumers} - {c.name for c in order})
        if missing:
            raise RuntimeError(f"consumers never called in a forward pass: {missing}")
        self.consumers = order

    @contextlib.contextmanager
    def _timed_pass(self) -> Iterator[None]:
        """Within: time counted as forward passes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.pass_seconds += time.perf_counter() - start

    def _apply_reparams(self, consumer: Consumer, stage: str) -> bool:
        """Apply the consumer's reparameterizations of ``stage``; whether any applied."""
        applied = [self._maybe_apply(site, stage) for site in self.sites if site.consumer is consumer.module]
        return any(applied)

    def _site_applies(self, site: ReparamSite) -> bool:
        """Whether the config asks for the site's reparameterization (whatever its stage)."""
        point = site.consumer.input_quant
        return self.qconfig.reparam and point.spec is not None and reparam_for(site).applies(site, point.spec)

    def _maybe_apply(self, site: ReparamSite, stage: str) -> bool:
        reparam = reparam_for(site)
        if id(site) in self.applied or reparam.stage != stage:
            return False
        if self._site_applies(site):
            reparam.apply(site)
            if stage == "after" and self.qconfig.weight_init == "search":
                self.init_weights([site.consumer])  # the fold quantized its new weight by the data-only rule
            self.applied.add(id(site))
            self.reparameterizations[site.kind] = self.reparameterizations.get(site.kind, 0) + 1
            return True
        return False

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        """Within: passes see the inputs the points are fitted on; with ``inputs="parallel"`` every
        point and weight of the model is off (the float function: the reparameterizations are exact)."""
        if self.qconfig.inputs != "parallel":
            yield
            return
        saved = [(m, m.mode) for m in self.qmodel.modules() if isinstance(getattr(m, "mode", None), Mode)]
        for module, _ in saved:
            module.mode = Mode.FLOAT
        try:
            yield
        finally:
            for module, mode in saved:
                module.mode = mode

    def _fit_consumer(self, consumer: Consumer, arrived: tuple[torch.Tensor, ...] | None = None) -> None:
        """Stage 3 at one consumer: "before" reparameterizations, its input points, then its weight
        when the weight's spec asks for a metric search (alternating with the inputs for
        ``weight_rounds`` rounds). ``arrived``: the operands of the one batch as the one-pass forward
        brings them (:meth:`_run_one_pass`); otherwise the consumer's observation pass records them."""
        if arrived is None:
            with self._stream(), self._timed_pass():
                self.passes += self.cache.advance(self.qmodel, self.batches, consumer.unit)
            if self._apply_reparams(consumer, "before"):
                log.debug("%s: input reparameterized before fitting", consumer.name)
            observed = self._observe(consumer)
        else:
            observed = [arrived]
        self._fit_points(consumer, observed, [p.spec for p in consumer.points])
        if not self._weight_searched(consumer):
            return
        # AdaLog's order: fold the fitted per-channel input first (its weights change), then search
        # the weight on the input as it now arrives, quantized by the fitted point
        folded = self._apply_reparams(consumer, "after")
        if folded:  # never in the one-pass forward (fits_in_one_pass)
            observed = self._observe(consumer)
        specs = [self._refit_spec(p) if folded else p.spec for p in consumer.points]
        for r in range(self.qconfig.weight_rounds):
            if r > 0 or (folded and self.qconfig.refit_after_reparam):
                self._fit_points(consumer, observed, specs)
            self._fit_weight(consumer, self._search_subset(observed))

    def _refit_spec(self, point: QuantPoint) -> QuantSpec | None:
        """The spec that searches a folded (now per-tensor) input again, or None to keep the fold's."""
        if not self.qconfig.refit_after_reparam or point.spec is None:
            return None
        return replace(point.spec, granularity="tensor", objective="output")

    def _fit_points(self, consumer: Consumer, observed: list[tuple], specs: list[QuantSpec | None]) -> None:
        """Fit the consumer's input points with ``specs`` (None: leave that point as it is)."""
        points = consumer.points
        searched = any(s is not None and scores_output(s) for s in specs)
        operands = self._search_subset(observed)
        inputs = [_point_input(observed, i) for i in consumer.operands]
        float_output = self._float_output(consumer) if searched and self.qconfig.reference == "float" else None
        rounds = self.qconfig.operand_rounds if searched and len(points) > 1 else 1
        for _ in range(rounds):
            for i, (point, spec) in enumerate(zip(points, specs)):
                if spec is None:
                    continue
                reference = None
                if searched:
                    reference = float_output if float_output is not None else self._reference(consumer, operands, i)
                self._fit_point(point, spec, i, consumer, inputs[i], operands, reference)

    def _observe(self, consumer: Consumer) -> list[tuple]:
        self.passes += 1
        with self._stream(), self._timed_pass():
            return self.cache.run(self.qmodel, self.batches, consumer.module, "input")

    def _search_subset(self, observed: list[tuple]) -> list[torch.Tensor]:
        """The consumer's operands on the first ``search_images`` images (the first batch starts with them)."""
        rows = observed[0][0].shape[0] * self.search_images // self.batches[0].shape[0]
        return [op[:rows] for op in observed[0]]

    @staticmethod
    def _weight_searched(consumer: Consumer) -> bool:
        spec = getattr(consumer.module, "weight_spec", None)
        return isinstance(consumer.module, WeightQuantMixin) and spec is not None and needs_consumer(spec)

    def _fit_weight(self, consumer: Consumer, operands: list[torch.Tensor]) -> None:
        """Search the consumer's weight quantizer by the layer's output on the quantized input.

        The reference is the layer with its float weight on the same quantized input (``reference``
        "local" or "float"), or on the full-precision input ("layer"); each output channel (one weight
        row) keeps its own best candidate. A spec with objective "input" scores the weight's own error.
        """
        layer = consumer.module
        spec = layer.weight_spec  # type: ignore[union-attr]
        if spec.objective == "input":
            self._search_weight(layer)  # type: ignore[arg-type]
            return
        with torch.no_grad():
            x = consumer.points[0](operands[0])
        weight = layer.weight.detach()
        with torch.no_grad():
            source = operands[0] if self.qconfig.reference == "layer" else x
            reference = layer.consume_weight(source, weight)  # type: ignore[attr-defined]
        ctx = FitContext(
            where=f"{consumer.name}.weight", inputs=weight, axis=0,
            consume=lambda ops: layer.consume_weight(x, ops[0]),  # type: ignore[attr-defined]
            operands=[weight], operand=0, others=[lambda w: w], reference=reference,
            output_axis=layer.out_channel_axis,  # type: ignore[attr-defined]
            grad=self.grads.get(consumer.name) if spec.metric == "hessian" else None,
        )
        start = time.perf_counter()
        quantizer, evaluations = fit_point(spec, ctx, self.qconfig.search)
        layer.set_weight_quantizer(quantizer)
        self._count(ctx.where, evaluations, time.perf_counter() - start)

    def _search_weight(self, layer: WeightQuantMixin) -> None:
        """The weight spec's search on the weight's own reconstruction error, per output channel."""
        assert layer.weight_spec is not None
        where = f"{layer.layer_name}.weight"
        start = time.perf_counter()
        ctx = FitContext(where=where, inputs=layer.weight.detach(), axis=0)
        quantizer, evaluations = fit_point(layer.weight_spec, ctx, self.qconfig.search)
        layer.set_weight_quantizer(quantizer)
        self._count(where, evaluations, time.perf_counter() - start)

    def init_weights(self, layers: Sequence[WeightQuantMixin]) -> None:
        """Stage 2 (and again after a reparameterization changed a weight): the data-only rule, or,
        with ``weight_init="search"``, the weight spec's metric search on its own error."""
        for layer in layers:
            spec = layer.weight_spec
            if self.qconfig.weight_init == "search" and spec is not None and needs_consumer(spec):
                self._search_weight(layer)
            else:
                layer.quantize_weight()
            layer.mode = Mode.QUANTIZE

    def _count(self, where: str, evaluations: int, seconds: float) -> None:
        n, t = self.evaluations.get(where, (0, 0.0))
        self.evaluations[where] = (n + evaluations, t + seconds)

    def _reference(self, consumer: Consumer, operands: list[torch.Tensor], index: int) -> torch.Tensor:
        """The consumer's reference output for operand ``index`` (``reference`` "local" or "layer")."""
        if self.qconfig.reference == "layer":
            return self._layer_reference(consumer, operands)
        return self._local_reference(consumer, operands, index)

    @staticmethod
    def _layer_reference(consumer: Consumer, operands: list[torch.Tensor]) -> torch.Tensor:
        """The consumer on full-precision operands with its float weight (if it has one)."""
        module = consumer.module
        with torch.no_grad():
            if isinstance(module, WeightQuantMixin):
                return module.consume_weight(operands[0], module.weight.detach())
            return module.consume(operands)  # type: ignore[operator]

    @staticmethod
    def _local_reference(consumer: Consumer, operands: list[torch.Tensor], index: int) -> torch.Tensor:
        """The consumer's output with operand ``index`` at full precision and the others as they are."""
        with torch.no_grad():
            ops = [x if j == index else point(x) for j, (x, point) in enumerate(zip(operands, consumer.points))]
            return consumer.module.consume(ops)  # type: ignore[operator]

    def _float_output(self, consumer: Consumer) -> torch.Tensor:
        """The float model's output of the same consumer on the search images."""
        assert self.float_model is not None
        with self._timed_pass():
            self.passes += self.float_cache.advance(self.float_model, self.search_batch, consumer.unit) + 1
            return self.float_cache.run(self.float_model, self.search_batch, self.float_modules[consumer.name], "output")[0]

    def _fit_point(
        self, point: QuantPoint, spec: QuantSpec | None, index: int, consumer: Consumer, inputs: torch.Tensor,
        operands: list[torch.Tensor], reference: torch.Tensor | None,
    ) -> None:
        """Fit one point with ``spec`` on everything that reached it (``inputs``); ``operands`` and
        ``reference``: the consumer's operands and reference output on the search images, for
        metric searches scored on the consumer's output."""
        if spec is None:
            raise RuntimeError(f"quantization point {point.point_name} has no spec")
        axis = point.axis(spec.granularity)
        ctx = FitContext(where=point.point_name or point.role, inputs=inputs, axis=axis)
        if scores_output(spec) and reference is not None:
            ctx.consume = consumer.module.consume  # type: ignore[assignment]
            ctx.operands, ctx.operand, ctx.reference = operands, index, reference
            ctx.others = list(consumer.points)
            ctx.grad = self.grads.get(consumer.name)
            # a matmul keeps its operands' head axis in its output: per-head rows are scored apart
            ctx.output_axis = axis if spec.granularity == "head" else None
        start = time.perf_counter()
        quantizer, evaluations = fit_point(spec, ctx, self.qconfig.search)
        seconds = time.perf_counter() - start
        point.set_quantizer(quantizer)
        point.mode = Mode.QUANTIZE
        rows = ctx.rows()  # the rows the search fitted (formed once)
        low, high = rows.amin(dim=1), rows.amax(dim=1)  # (torch.aminmax along a dim is 10-20x slower on CPU)
        shape = param_shape(inputs.shape, axis)
        point.observed_min, point.observed_max = low.reshape(shape), high.reshape(shape)
        self._count(point.point_name, evaluations, seconds)

    def finish(self) -> int:
        """Stage 4: the "after" reparameterizations (all of them, also those already applied at a
        consumer whose weight was searched); returns how many sites were rewritten in all."""
        for site in self.sites:
            self._maybe_apply(site, "after")
        return sum(1 for site in self.sites if id(site) in self.applied and reparam_for(site).stage == "after")


def quantize_model(
    model: nn.Module,
    calib_images: torch.Tensor | Sequence[torch.Tensor],
    qconfig: QConfig,
    progress: bool = False,
) -> CalibrationResult:
    """Run the pipeline on a copy of ``model``; returns the quantized model (in ``Mode.QUANTIZE``).

    ``calib_images``: one batch ``[N, 3, H, W]`` or a sequence of batches (any number).
    """
    batches = calibration_batches(calib_images, qconfig.search_images)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    qmodel, fitter, reparameterized = _calibrate(model, batches, qconfig, stages, progress)
    activation = dict(fitter.activation_seconds)

    nonlinear = None
    if kernel_layers(qmodel):
        t = time.perf_counter()
        nonlinear, resolved = _select_kernels(model, qmodel, batches, qconfig)
        stages["nonlinear_sensitivity"] = time.perf_counter() - t
        if resolved is not qconfig:
            # mixed layers were calibrated with their first candidate active, so the points after them
            # were fitted on its outputs; calibrate again with the choices pinned, so that the result
            # is exactly what the resolved (plain-data) config gives
            again: dict[str, float] = {}
            qmodel, fitter, reparameterized = _calibrate(model, batches, resolved, again, progress)
            stages.update({f"recalibration_{k}": v for k, v in again.items()})
            activation.update({f"recalibration_{k}": v for k, v in fitter.activation_seconds.items()})
            qconfig = resolved
    seconds = time.perf_counter() - start

    t = time.perf_counter()
    count_levels(qmodel, batches)
    stages["level_count"] = time.perf_counter() - t

    points = point_reports(qmodel, fitter.evaluations)
    images_total = sum(int(b.shape[0]) for b in batches)
    log.info("calibrated %d points on %d images in %.2f s (%d passes)", len(points), images_total, seconds, fitter.passes)
    return CalibrationResult(
        model=qmodel,
        qconfig=qconfig,  # with the mixed kernel choices pinned
        images=images_total,
        seconds=seconds,
        stage_seconds=stages,
        reparameterized=reparameterized,
        reparameterizations=dict(fitter.reparameterizations),
        passes=fitter.passes,
        points=points,
        activation_seconds=activation,
        nonlinear=nonlinear,
    )


def _calibrate(
    model: nn.Module, batches: list[torch.Tensor], qconfig: QConfig, stages: dict[str, float], progress: bool
) -> tuple[nn.Module, _Fitter, int]:
    """Stages 1-4 on a copy of ``model``: prepare, weights, activations consumer by consumer, "after"
    reparameterizations; returns the model in ``Mode.QUANTIZE``, the fitter and the rewritten sites."""
    qmodel = prepare(copy.deepcopy(model).eval(), qconfig)
    qmodel.requires_grad_(False)

    t = time.perf_counter()
    fitter = _Fitter(qmodel, model, batches, qconfig)
    t_weights = time.perf_counter()
    fitter.init_weights([m for m in qmodel.modules() if isinstance(m, WeightQuantMixin)])
    stages["weights"] = time.perf_counter() - t_weights
    fitter.run(progress)
    stages["activations"] = time.perf_counter() - t - stages["weights"]
    fitter.activation_seconds = {"passes": fitter.pass_seconds, "searches": stages["activations"] - fitter.pass_seconds}

    t = time.perf_counter()
    reparameterized = fitter.finish()
    stages["reparameterization"] = time.perf_counter() - t
    set_mode(qmodel, Mode.QUANTIZE)
    return qmodel, fitter, reparameterized


def _select_kernels(
    model: nn.Module, qmodel: nn.Module, batches: list[torch.Tensor], qconfig: QConfig
) -> tuple[NonlinearReport, QConfig]:
    """The sensitivity pass of the kernel layers (:mod:`vitquant.nonlinear.mixed`): measure every
    prepared family against the float model, keep one per layer by the config's rule; the returned
    QConfig names the choice of every layer that had several candidates."""
    float_model = prepare(copy.deepcopy(model).eval(), qconfig)
    set_mode(float_model, Mode.FLOAT)
    rows = measure(float_model, qmodel, batches)
    choices = choose(rows, qconfig.nonlinear.rule)
    mixed = {name: choices[name] for name, m in kernel_layers(qmodel).items() if len(m.slots) > 1}
    apply_choices(qmodel, choices)
    if mixed:
        log.info("mixed non-linear kernels (%s): %s", qconfig.nonlinear.rule, NonlinearReport(qconfig.nonlinear.rule, rows, choices).counts())
        qconfig = qconfig.with_nonlinear(qconfig.nonlinear.resolved(mixed))
    return NonlinearReport(qconfig.nonlinear.rule, rows, choices), qconfig
