"""Layer-wise sensitivity of the non-linear kernels and the mixed per-layer choice (Mixed Non-linear
Quantization for ViTs, Kim et al. 2024).

After calibration, for every kernel family prepared somewhere in the model, the quantized model runs
the calibration images with that family active at every layer that has it (the paper's "model
quantized with one method"; a layer without it, e.g. GELU for FQ-ViT, runs its first candidate), next
to the float model. At each non-linear layer:

    γ = ASQNR(X_in, Q_in),  β = ASQNR(X_out, Q_out),  SQNR diff = β - γ

with X_in the float model's input of the layer, X_out the layer's exact float op on X_in (with the
quantized model's own parameters: RepQ-ViT's reparameterization rescales LayerNorm's affine, so the
float model's LayerNorm output is not the reference), and Q the quantized model's input (after the
kernel's input point) and output. Rules (``NonlinearConfig.rule``):

- ``sqnr-diff`` (the paper's): the family with the smallest |SQNR diff|. The paper says "lowest SQNR
  diff"; its worked examples (0.29 and 12.12 picked as the best) read as the size of the change, so
  we take the absolute value; the report keeps the signed values.
- ``output-sqnr``: the family with the highest output ASQNR (the paper's comparison rule).

The choice becomes plain data: the config's ``overrides`` name every layer's family
(:meth:`NonlinearConfig.resolved`), and only the chosen slot is kept in the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from vitquant.kernels.base import FAMILIES, OPS
from vitquant.nn.int_tensor import IntTensor
from vitquant.nn.nonlinear import QuantNonLinear
from vitquant.nonlinear.sqnr import ASQNRMeter


@dataclass(frozen=True)
class Sensitivity:
    """One (layer, family) measurement."""

    layer: str
    op: str
    family: str
    input_asqnr: float
    output_asqnr: float

    @property
    def diff(self) -> float:
        return self.output_asqnr - self.input_asqnr

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sqnr_diff": self.diff}


@dataclass
class NonlinearReport:
    """The per-layer table, the rule and the family running at each layer."""

    rule: str
    rows: list[Sensitivity] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)

    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    def counts(self) -> dict[str, dict[str, int]]:
        """How many layers of each op type run each family (the paper's Table 3)."""
        ops = {r.layer: r.op for r in self.rows}
        out: dict[str, dict[str, int]] = {op: {} for op in OPS if op in ops.values()}
        for layer, family in self.choices.items():
            op = ops[layer]
            out[op][family] = out[op].get(family, 0) + 1
        return out

    def table(self) -> str:
        """Markdown: layer, op, then per family input / output ASQNR and SQNR diff, and the choice."""
        families = [f for f in FAMILIES if any(r.family == f for r in self.rows)]
        by = {(r.layer, r.family): r for r in self.rows}
        ops = {r.layer: r.op for r in self.rows}
        head = "| layer | op | " + " | ".join(f"{f} in / out / diff" for f in families) + " | choice |"
        lines = [head, "|" + "---|" * (len(families) + 3)]
        for layer in self.layers():
            cells = []
            for f in families:
                r = by.get((layer, f))
                cells.append("—" if r is None else f"{r.input_asqnr:.1f} / {r.output_asqnr:.1f} / {r.diff:+.1f}")
            lines.append(f"| {layer} | {ops[layer]} | " + " | ".join(cells) + f" | {self.choices.get(layer, '—')} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "choices": dict(self.choices), "counts": self.counts(),
                "layers": [r.to_dict() for r in self.rows]}


def kernel_layers(model: nn.Module) -> dict[str, QuantNonLinear]:
    """Non-linear modules of a prepared model that run (or may run) a kernel, in module order, by the
    name they had when the model was prepared (a reparameterization may wrap them, e.g. AdaLog's
    shifted GELU; the float model and the configuration keep that name)."""
    return {m.layer_name or n: m for n, m in model.named_modules() if isinstance(m, QuantNonLinear) and len(m.slots)}


@contextmanager
def _capture(model: nn.Module, names: list[str], quantized: bool) -> Iterator[dict[str, list]]:
    """Record, per named non-linear module and forward: ``[input]`` of the float model, or
    ``[Q_in, Q_out]`` of the quantized one, Q_in being the output of the active slot's input point or
    the integers it was given (what the kernel received; the float op's input when no slot is active)."""
    store: dict[str, list] = {}
    modules = kernel_layers(model) if quantized else dict(model.named_modules())
    handles = []
    for name in names:
        module = modules[name]

        def record_input(mod: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0]
            store[name] = [x.dequantize() if isinstance(x, IntTensor) else x.detach()]

        def record_point(point: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
            store[name][0] = output.detach()

        def record_output(mod: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
            store[name].append(output.detach())

        handles.append(module.register_forward_pre_hook(record_input))
        if quantized:
            if module.active is not None and module.slots[module.active].input_quant is not None:
                handles.append(module.slots[module.active].input_quant.register_forward_hook(record_point))
            handles.append(module.register_forward_hook(record_output))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def measure(float_model: nn.Module, qmodel: nn.Module, batches: list[torch.Tensor]) -> list[Sensitivity]:
    """ASQNR of every kernel layer's input and output, per family (see the module docstring)."""
    layers = kernel_layers(qmodel)
    names = list(layers)
    families = [f for f in FAMILIES if any(f in m.slots for m in layers.values())]
    previous = {n: m.active for n, m in layers.items()}
    meters = {(n, f, side): ASQNRMeter() for n in names for f in families for side in ("in", "out")}
    try:
        with torch.no_grad():
            for images in batches:
                with _capture(float_model, names, quantized=False) as ref:
                    float_model(images)
                x_out: dict[str, torch.Tensor] = {}  # the exact op on X_in: the same for every family
                for family in families:
                    for name, module in layers.items():
                        module.activate(family if family in module.slots else previous[name])
                    with _capture(qmodel, names, quantized=True) as got:
                        qmodel(images)
                    for name in names:
                        if family in layers[name].slots:
                            x_in = ref[name][0]
                            meters[(name, family, "in")].update(x_in, got[name][0])
                            if name not in x_out:
                                x_out[name] = layers[name].float_forward(x_in)
                            meters[(name, family, "out")].update(x_out[name], got[name][1])
    finally:
        for name, module in layers.items():
            module.activate(previous[name])
    return [
        Sensitivity(name, layers[name].op, f, meters[(name, f, "in")].value, meters[(name, f, "out")].value)
        for name in names for f in families if f in layers[name].slots
    ]


def choose(rows: list[Sensitivity], rule: str) -> dict[str, str]:
    """The family per layer under ``rule`` (ties: the first family in FAMILIES order)."""
    best: dict[str, Sensitivity] = {}
    for r in rows:
        cur = best.get(r.layer)
        tie = cur is not None and not _better(cur, r, rule) and FAMILIES.index(r.family) < FAMILIES.index(cur.family)
        if cur is None or _better(r, cur, rule) or tie:
            best[r.layer] = r
    return {layer: r.family for layer, r in best.items()}


def _better(a: Sensitivity, b: Sensitivity, rule: str) -> bool:
    if rule == "sqnr-diff":
        return abs(a.diff) < abs(b.diff)
    if rule == "output-sqnr":
        return a.output_asqnr > b.output_asqnr
    raise ValueError(f"unknown rule {rule!r}")


def apply_choices(qmodel: nn.Module, choices: dict[str, str]) -> None:
    """Activate each layer's chosen family and drop the other slots."""
    layers = kernel_layers(qmodel)
    for name, family in choices.items():
        module = layers[name]
        module.activate(family)
        module.slots = nn.ModuleDict({family: module.slots[family]})
