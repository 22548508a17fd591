"""Calibration as explicit passes over the calibration batches, one consumer at a time.

The points are fitted in network order, grouped by their *consumer* (the Linear, conv or matmul that
takes the quantized input). For each consumer the pipeline runs an **observation pass**: the
calibration batches go through the partly quantized model (points fitted so far quantize, the rest
pass values through) and a pre-hook on the consumer records its raw operands and stops the forward.
Metric searches also get a **reference pass** through the float model on the search images, recording
the consumer's full-precision output, and, for the Hessian metric, one **gradient pass** up front.

Passes do not re-run the whole network. The adapter names the model's *units* (transformer blocks,
patch merging), consecutive modules whose outputs are cached once all their points are fitted
(:class:`UnitCache`): later passes replay the last cached unit's output and skip the units before it,
so calibrating a block costs a few passes through that block. The calibration set is a list of
batches of any number; only the operands of the consumer being fitted are held at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitquant.nn.quant_point import QuantPoint


class _Stop(Exception):
    """Raised by a hook to end a forward once what a pass needs has been recorded."""


@dataclass
class Consumer:
    """A module taking quantized inputs (``input_points`` / ``consume``) and its place in the network."""

    name: str
    module: nn.Module
    unit: int  # index into the adapter's units; -1 before the first, len(units) after the last

    @property
    def points(self) -> list[QuantPoint]:
        return self.module.input_points()  # type: ignore[operator]

    @property
    def operands(self) -> list[int | tuple[int, ...]]:
        """Which operand each input point quantizes (default: point i quantizes operand i); a tuple:
        the point quantizes several operands and is fitted on all of them (a residual add's)."""
        mapping = getattr(self.module, "point_operands", None)
        return mapping() if callable(mapping) else list(range(len(self.points)))


def is_consumer(module: nn.Module) -> bool:
    return callable(getattr(module, "input_points", None)) and callable(getattr(module, "consume", None))


def consumers_in_order(
    model: nn.Module, units: list[tuple[str, nn.Module]], example: torch.Tensor
) -> list[Consumer]:
    """Every consumer of ``model`` with input points, in the order a forward on ``example`` calls it."""
    names = {id(m): n for n, m in model.named_modules() if is_consumer(m)}
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: order.append(mod) if mod not in order else None)
        for n, m in model.named_modules() if is_consumer(m)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    unit_names = [n for n, _ in units]
    out, seen_unit = [], -1
    for module in order:
        name = names[id(module)]
        unit = next((i for i, u in enumerate(unit_names) if name.startswith(u + ".")), None)
        if unit is None:
            unit = -1 if seen_unit < 0 else len(units)
        seen_unit = max(seen_unit, unit)
        out.append(Consumer(name, module, unit))
    missing = set(names.values()) - {c.name for c in out}
    if missing:
        raise RuntimeError(f"consumers never called in a forward pass: {sorted(missing)}")
    return [c for c in out if c.points]  # a float non-linear module has nothing to fit


@dataclass
class UnitCache:
    """Outputs of unit ``index`` for every batch; units before it are skipped in later passes."""

    units: list[tuple[str, nn.Module]]
    index: int = -1
    outputs: list[Any] = field(default_factory=list)
    batch: int = 0

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Within: units[index] returns its cached output, the units before it return their input."""
        patched = []
        for i in range(self.index + 1):
            module = self.units[i][1]
            if i == self.index:
                module.forward = lambda *args, **kwargs: self.outputs[self.batch]  # type: ignore[method-assign]
            else:
                module.forward = lambda x, *args, **kwargs: x  # type: ignore[method-assign]
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward

    def run(self, model: nn.Module, batches: list[torch.Tensor], stop: nn.Module, record: str) -> list[Any]:
        """Forward every batch until ``stop`` runs; returns, per batch, its inputs (``record='input'``,
        a tuple) or its output (``record='output'``)."""
        recorded: list[Any] = []

        def pre_hook(module: nn.Module, args: tuple) -> None:
            recorded.append(tuple(a.detach() for a in args))
            raise _Stop

        def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
            recorded.append(output.detach() if isinstance(output, torch.Tensor) else output)
            raise _Stop

        handle = stop.register_forward_pre_hook(pre_hook) if record == "input" else stop.register_forward_hook(post_hook)
        try:
            with self.replaying(), torch.no_grad():
                for b, x in enumerate(batches):
                    self.batch = b
                    try:
                        model(x)
                    except _Stop:
                        continue
                    raise RuntimeError(f"a calibration pass never reached {type(stop).__name__}")
        finally:
            handle.remove()
        return recorded

    def advance(self, model: nn.Module, batches: list[torch.Tensor], target: int) -> int:
        """Cache units up to ``target - 1`` (all their points must be fitted); returns the passes run."""
        passes = 0
        while self.index < min(target, len(self.units)) - 1:
            outputs = self.run(model, batches, self.units[self.index + 1][1], "output")
            self.index += 1
            self.outputs = outputs
            passes += 1
        return passes


def collect_output_grads(
    model: nn.Module, images: torch.Tensor, consumer_names: set[str]
) -> dict[str, torch.Tensor]:
    """dL/d(output) of the named consumers of the float ``model`` on ``images``, with L the mean
    cross-entropy of the logits against the model's own top-1 prediction (PTQ4ViT)."""
    grads: dict[str, torch.Tensor] = {}
    handles = []
    modules = dict(model.named_modules())
    for name in consumer_names:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
            output.register_hook(lambda g: grads.__setitem__(name, g.detach()))

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, logits.argmax(dim=1))
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return grads


def first_unit_input(
    model: nn.Module, units: list[tuple[str, nn.Module]], images: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The input of ``units[0]`` for every image, ``chunk`` images per forward (each stopped there)."""
    recorded = UnitCache(units).run(model, list(images.split(chunk)), units[0][1], "input")
    return torch.cat([args[0] for args in recorded])


def forward_chunked(module: nn.Module, inputs: torch.Tensor, chunk: int) -> torch.Tensor:
    """``module`` on ``inputs``, ``chunk`` rows per forward, without gradients, concatenated."""
    with torch.no_grad():
        return torch.cat([module(x) for x in inputs.split(chunk)])

