"""Quantizer specs: a number format as plain data, registered by kind (like ``torch.ao`` qconfigs).

A :class:`QuantSpec` says *what* goes at a quantization point: the format (its ``kind``), bit width,
granularity (one parameter set per tensor, per channel or per attention head), which search finds its
parameters, by which metric and on what (``objective``: the consumer's output or the point's own
input). Each format module defines its own small spec subclass and registers it with
:func:`register_spec`; nothing else lists the formats. A spec knows four things about its
format, all per *row* (one row per tensor, channel or head, see :func:`rows_of`):

- ``initialize(rows)``: the data-only fit (the ``percentile`` search: RepQ-ViT's percentile/MSE rule
  for uniform and log√2, the closed-form divisor for BitLog2, ...), returning parameters per row;
- ``grid(rows, init)``: candidate values of its (one or two) search parameters, ``[K, R]`` each, for
  the metric-driven searches (brute force, alternating, FPCS);
- ``from_grid(values)``: search parameters -> quantizer parameters;
- ``build(params, shape)``: the fitted :class:`~vitquant.quantizers.Quantizer`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from vitquant.errors import ConfigError
from vitquant.quantizers.base import MAX_BITS, MIN_BITS, Quantizer, check_bits

GRANULARITIES = ("tensor", "channel", "head")
#: what a metric search scores a candidate on: the consumer's output (a Linear's, a matmul's), or the
#: point's own input (reconstruction error, one score per row: AdaLog's per-channel post-LayerNorm fit)
OBJECTIVES = ("output", "input")
Params = dict[str, torch.Tensor]


def rows_of(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as float32 rows ``[R, M]``: one row per index of ``axis`` (one row for the tensor if None)."""
    x = x.detach().to(torch.float32)
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def param_shape(x_shape: torch.Size | tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    """Shape that broadcasts one value per row back onto a tensor of ``x_shape`` (trailing alignment)."""
    if axis is None:
        return ()
    d = axis % len(x_shape)
    return (x_shape[d],) + (1,) * (len(x_shape) - 1 - d)


@dataclass(frozen=True, kw_only=True)
class QuantSpec(abc.ABC):
    """Base of every format's spec. Subclasses add their options as more dataclass fields."""

    bits: int
    granularity: str = "tensor"
    search: str | None = None  # None: the format's default_search
    metric: str = "mse"
    objective: str = "output"  # what a metric search scores: the consumer's "output" or the point's own "input"

    kind: ClassVar[str] = ""
    default_search: ClassVar[str] = "percentile"
    nonnegative: ClassVar[bool] = False  # only non-negative inputs (log formats)
    refinable: ClassVar[tuple[str, ...]] = ()  # continuous grid parameters that FPCS refines
    bit_range: ClassVar[tuple[int, int]] = (MIN_BITS, MAX_BITS)  # the bit widths the format accepts

    def __post_init__(self) -> None:
        check_bits(self.bits, f"{self.kind} bit width", *self.bit_range)
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        from vitquant.search.registry import check_metric, check_search  # registries import the specs

        check_search(self.search_name)
        check_metric(self.metric)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")

    # ------------------------------------------------------------------ description
    @property
    def search_name(self) -> str:
        return self.search or self.default_search

    @property
    @abc.abstractmethod
    def format_name(self) -> str:
        """The format's own name (e.g. ``BitLog2_Half_17``, ``uniform``)."""

    @property
    def name(self) -> str:
        suffix = "" if self.granularity == "tensor" else f"-per-{self.granularity}"
        return f"{self.format_name}{suffix}"

    @property
    @abc.abstractmethod
    def max_levels(self) -> int:
        """Distinct values a quantizer of this spec can emit (per row when not per tensor)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, **asdict(self), "search": self.search_name,
                "max_levels": self.max_levels}

    # ------------------------------------------------------------------ fitting
    @abc.abstractmethod
    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        """Data-only fit on rows ``[R, M]``: quantizer parameters, one value per row."""

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        """Candidate values ``[K, R]`` of each search parameter (default: none, only ``initialize``)."""
        raise ConfigError(f"{self.format_name} has no search grid; use --search percentile")

    def from_grid(self, values: Params) -> Params:
        """Search-parameter values (one per row) -> quantizer parameters. Default: the same names."""
        return values

    @abc.abstractmethod
    def build(self, params: Params, shape: tuple[int, ...]) -> Quantizer:
        """The quantizer with ``params`` (one value per row) reshaped to ``shape``."""

    def check_input(self, rows: torch.Tensor, where: str) -> None:
        """Format-specific input checks (e.g. non-negative data for log formats)."""
        if self.nonnegative:
            lo = float(rows.min())
            if lo < 0:
                from vitquant.errors import NumericalError

                raise NumericalError(f"{where}: {self.format_name} needs non-negative input, min is {lo}")

    def fit(self, x: torch.Tensor, axis: int | None = None, where: str = "") -> Quantizer:
        """Data-only fit of ``x`` (rows along ``axis`` unless per tensor): the quantizer from ``initialize``."""
        from vitquant.search.checks import check_calibration_tensor

        where = where or self.name
        check_calibration_tensor(x, where)
        axis = None if self.granularity == "tensor" else axis
        rows = rows_of(x, axis)
        self.check_input(rows, where)
        return self.build(self.initialize(rows, where), param_shape(x.shape, axis))


_SPECS: dict[str, type[QuantSpec]] = {}


def register_spec(cls: type[QuantSpec]) -> type[QuantSpec]:
    """Class decorator: make a spec available by its ``kind``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} has no kind")
    _SPECS[cls.kind] = cls
    return cls


def spec_kinds() -> list[str]:
    return sorted(_SPECS)


def make_spec(kind: str, **options: Any) -> QuantSpec:
    """A spec of a registered ``kind`` with ``options`` (unknown options are an error)."""
    if kind not in _SPECS:
        raise ConfigError(f"unknown quantizer kind {kind!r}; known: {', '.join(spec_kinds())}")
    cls = _SPECS[kind]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{kind} quantizer has no option(s) {unknown}; options: {sorted(known)}")
    return cls(**options)


def spec_from_dict(data: Mapping[str, Any]) -> QuantSpec:
    """Inverse of :meth:`QuantSpec.to_dict` (derived keys ignored)."""
    options = {k: v for k, v in data.items() if k not in ("kind", "name", "max_levels")}
    spec_cls = _SPECS.get(str(data.get("kind")))
    if spec_cls is not None and options.get("search") == spec_cls.default_search:
        options["search"] = None
    return make_spec(str(data.get("kind")), **options)
