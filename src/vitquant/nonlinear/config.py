"""Which non-linear kernel runs at which layer: plain data, like the quantizer QConfig.

A :class:`NonlinearConfig` maps each non-linear *op* (``softmax``, ``gelu``, ``layernorm``) to a
choice: ``float`` (the exact op, today's behaviour), a kernel family (``ivit``, ``ibert``, ``fqvit``)
or ``mixed`` (every family that implements the op is prepared and the calibration's sensitivity pass
picks one per layer, :mod:`vitquant.nonlinear.mixed`). Per-layer ``overrides`` by exact module name
or ``fnmatch`` pattern (``blocks.11.*``) come first. Ops not mentioned stay float, so a config written
before an op was added keeps its meaning.

**Kernel inputs.** A kernel's input contract is (integers, scale, bound) from its producer: the softmax
kernels take the exact integer product of q@kᵀ; GELU takes fc1's accumulator and LayerNorm the residual
stream's integers, each narrowed by one requantization to the widest input the kernels accept
(``bits`` None, the default: :data:`~vitquant.quantizers.kernel_input.KERNEL_INPUT_BITS` = 16, the
symmetric :class:`~vitquant.quantizers.kernel_input.KernelInputSpec`). ``bits`` set (``--nonlinear-bits``)
is an explicit constraint for hardware that needs narrower kernel inputs: 2..8 bits get today's
asymmetric uniform point (RepQ-ViT's percentile fit), 9..16 the symmetric wide one. FQ-ViT's
LayerNorm takes its PTF point at the same width.

**Kernel outputs.** ``softmax_bits`` is the softmax kernels' output width (``out_bits``, recorded in
the integer program): None gives each family's default, :data:`SOFTMAX_OUT_BITS`: 16 for I-ViT's
Shiftmax (``IntSoftmax(16)`` in the published code) and for I-BERT (the published 8 bits floor away
up to half of each attention row's mass; measured in the README), FQ-ViT's Log-Int-Softmax emits
its published 4-bit log2 codes (its ``out_bits`` is the code width, on a 2^-15 grid, not a linear width).

``rule`` is the mixed selection rule (``sqnr-diff`` as in the paper, or ``output-sqnr``).

The residual adds of the blocks (op ``residual``, :mod:`vitquant.nn.residual`) are ``float`` or
``integer``: both operands on one ``residual_bits`` fixed-point grid, added as integers.
:meth:`NonlinearConfig.everywhere` with any kernel family makes them integer too, so that every
non-linear step of the model runs as an integer-only program would run it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vitquant.errors import ConfigError
from vitquant.kernels.base import FAMILIES, OPS, kernel_choices
from vitquant.quantizers.base import check_bits
from vitquant.quantizers.kernel_input import KERNEL_INPUT_BITS
from vitquant.quantizers.spec import QuantSpec, make_spec

FLOAT = "float"
MIXED = "mixed"
CHOICES = (FLOAT, *FAMILIES, MIXED)
RESIDUAL = "residual"  # the residual adds: float or integer
INTEGER = "integer"
RESIDUAL_BITS = 24
RULES = ("sqnr-diff", "output-sqnr")
NARROW_BITS = 8  # explicit kernel input widths up to this get the asymmetric uniform point
#: each family's softmax output width (``out_bits``) unless ``softmax_bits`` says otherwise
SOFTMAX_OUT_BITS = {"ivit": 16, "ibert": 16, "fqvit": 4}


@dataclass(frozen=True)
class NonlinearConfig:
    ops: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, str] = field(default_factory=dict)
    bits: int | None = None  # kernel input width; None: the kernels' own (16)
    rule: str = "sqnr-diff"
    residual_bits: int = RESIDUAL_BITS
    softmax_bits: int | None = None  # softmax output width; None: each family's (SOFTMAX_OUT_BITS)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ops) - {*OPS, RESIDUAL})
        if unknown:
            raise ConfigError(f"unknown non-linear ops {unknown}; ops: {', '.join((*OPS, RESIDUAL))}")
        checks = [(op, c, (FLOAT, INTEGER) if op == RESIDUAL else CHOICES) for op, c in self.ops.items()]
        checks += [(layer, c, (*CHOICES, INTEGER)) for layer, c in self.overrides.items()]
        for where, choice, allowed in checks:
            if choice not in allowed:
                raise ConfigError(f"non-linear choice {choice!r} for {where}: choose one of {', '.join(allowed)}")
        if self.bits is not None:
            check_bits(self.bits, "non-linear input bits", 2, KERNEL_INPUT_BITS)
        if self.softmax_bits is not None:
            check_bits(self.softmax_bits, "softmax output bits", 2, 16)
        check_bits(self.residual_bits, "residual bits", 8, 31)
        if self.rule not in RULES:
            raise ConfigError(f"unknown mixed rule {self.rule!r}; choose one of {', '.join(RULES)}")
        object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    @classmethod
    def everywhere(cls, choice: str, bits: int | None = None, rule: str = "sqnr-diff",
                   softmax_bits: int | None = None) -> NonlinearConfig:
        """The same choice for every op (``--nonlinear``)."""
        if choice not in CHOICES:
            raise ConfigError(f"unknown --nonlinear {choice!r}; choose one of {', '.join(CHOICES)}")
        if choice == FLOAT:
            return cls(bits=bits, rule=rule, softmax_bits=softmax_bits)
        return cls(ops={**{op: choice for op in OPS}, RESIDUAL: INTEGER}, bits=bits, rule=rule, softmax_bits=softmax_bits)

    @property
    def is_float(self) -> bool:
        return all(c == FLOAT for c in [*self.ops.values(), *self.overrides.values()])

    def choice_for(self, layer: str, op: str) -> str:
        """The choice at module ``layer`` running ``op``."""
        if layer in self.overrides:
            return self.overrides[layer]
        for pattern, choice in self.overrides.items():
            if fnmatch.fnmatchcase(layer, pattern):
                return choice
        return self.ops.get(op, FLOAT)

    def integer_residual(self, layer: str) -> bool:
        """Whether the residual add ``layer`` is integer (any choice but float: an override naming a
        kernel family for ``blocks.3.*`` makes that block's adds integer too)."""
        return self.choice_for(layer, RESIDUAL) != FLOAT

    def families_for(self, layer: str, op: str) -> list[str]:
        """Kernel families prepared at ``layer``: none (float), one, or every candidate (mixed).

        A family without a kernel for ``op`` (FQ-ViT has no GELU) leaves the layer float.
        """
        choice = self.choice_for(layer, op)
        if choice == FLOAT:
            return []
        available = kernel_choices(op)
        if choice == MIXED:
            return available
        return [choice] if choice in available else []

    def kernel_options(self, family: str, op: str) -> dict[str, int]:
        """The options of ``make_kernel(family, op)``: the softmax output width (``out_bits``)."""
        if op != "softmax":
            return {}
        if family == "fqvit":  # log2 code width, not a linear output width
            return {"out_bits": SOFTMAX_OUT_BITS[family]}
        return {"out_bits": self.softmax_bits or SOFTMAX_OUT_BITS.get(family, 8)}

    def input_spec(self, input_format: str) -> QuantSpec | None:
        """The spec of the point in front of a kernel of ``input_format`` (see the module docstring)."""
        return input_spec(input_format, self.bits)

    def resolved(self, choices: Mapping[str, str]) -> NonlinearConfig:
        """This config with every layer in ``choices`` pinned to its family (mixed -> plain data)."""
        return replace(self, overrides={**self.overrides, **choices})

    def to_dict(self) -> dict[str, Any]:
        return {"ops": dict(self.ops), "overrides": dict(self.overrides), "bits": self.bits, "rule": self.rule,
                "residual_bits": self.residual_bits, "softmax_bits": self.softmax_bits}


def input_spec(input_format: str, bits: int | None = None) -> QuantSpec | None:
    """The spec of the point in front of a kernel: one step per tensor (I-ViT, I-BERT: the wide
    symmetric ``kernel_input`` format, or the asymmetric ``uniform`` one for an explicit width of at
    most 8 bits), or FQ-ViT's power-of-two factors per channel (``ptf``); data-only fits. ``None`` for
    ``product`` (softmax): the kernel takes the integer q@kᵀ product, with no point of its own.
    ``bits`` None: the kernels' own input width (16)."""
    if input_format == "product":
        return None
    width = KERNEL_INPUT_BITS if bits is None else bits
    if input_format == "ptf":
        return make_spec("ptf", bits=width)
    if input_format == "uniform":
        return make_spec("uniform", bits=width) if width <= NARROW_BITS else make_spec("kernel_input", bits=width)
    raise ConfigError(f"unknown kernel input format {input_format!r}")
