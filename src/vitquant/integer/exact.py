"""The exact simulation: the fake-quantized model computing what its integer program computes, bit for bit.

In the default (fake-quant) arithmetic the calibrated model runs in float32 and rounds ``x / S`` at every
quantization point, while its integer program (:mod:`vitquant.integer.convert`) requantizes integer
accumulators with dyadic multipliers; the two agree on most predictions, not on the logits. The exact
simulation switches the *same* nn modules to the program's arithmetic:

- one derivation: :func:`~vitquant.integer.convert.plan_vit` builds the program and, for every module
  that computes something, the :class:`ExactStep` it runs: the program's own ops (same constants, same
  dyadic ``(m, s)``, same clamps) from its input to its output, e.g. a Linear's
  ``requant(in) -> linear``, a LayerNorm's ``requant(in) -> layernorm``, a residual add's
  ``requant(skip), requant(branch) -> add``; :func:`enable_exact` installs them (``module.exact``),
  :func:`disable_exact` removes them, and the model is the fake-quantized model again;
- every module knows its input scale (its producer's): values travel between modules, through timm's
  own reshapes, in real units as float64 ``v = fl(i · S)``, and a module reads its integers back as
  ``i = round(v / S)``. That is exact: each float64 operation on the way (``i·S``, timm's ``q · scale``,
  the division) errs by at most 2^-53 relative, so ``|v/S - i| < |i| · 2^-51 < 1/4`` for ``|i| < 2^49``
  (checked when the plan is made; at run time a distance above 1/4 raises);
- the ops run on float64 integers (:data:`~vitquant.kernels.arith.FLOAT`), the program's twin, equal
  to the int64 run bit for bit: codes minus zero points times integer weights, exact below 2^53.

Where the program requantizes before a layout change, the producer emits its consumers' codes: ``qkv``
requantizes each channel onto the q, k or v point (before timm splits the heads), attn@v onto proj's
input point (before the heads merge); the points ``qk.a_quant``, ``qk.b_quant``, ``av.b_quant`` and
``proj.input_quant`` then only read codes back. Every other point's requantization runs in its
consumer's step (a Linear, a kernel module, a residual add, the head).

What the model itself still does in float: layout (timm's reshapes, the head's token selection, the
final LayerNorm over all tokens rather than the class token only: it is per token), ``q · scale`` in
front of q@kᵀ (undone exactly by the read-back above), and for DeiT-distilled the average
``(head + head_dist) / 2`` of two logits ``i·S`` and ``j·S``: its float64 value may differ from the
program's ``(i + j) · S/2`` in the last bit of float64, never in the integer logits
(:func:`exact_integer_logits` reads them back, exactly, as above). So the integer logits are equal on
every image; non-distilled models also give the program's float64 logits ``ints · output_scale``
bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vitquant.errors import RangeError
from vitquant.integer.execute import prepare_constant, quantize_image
from vitquant.integer.ops import OPS, Context
from vitquant.integer.program import Op
from vitquant.kernels.arith import FLOAT
from vitquant.nn.int_tensor import IntTensor

if TYPE_CHECKING:
    from vitquant.integer.convert import VitPlan

#: integers that cross a module boundary stay below this bound, so that reading them back is exact
READ_BACK_BITS = 49
#: the key of the model's own step: class (distillation) token and position embedding (timm's ``_pos_embed``)
EMBEDDING = "_pos_embed"
_CTX = Context(FLOAT)


def read_back(values: torch.Tensor, scale: torch.Tensor | float, what: str) -> torch.Tensor:
    """The integers ``round(v / S)`` of real values ``v = fl(i · S)`` (float64; exact for |i| < 2^49).
    A distance above 1/4 from every integer means the value was not on that grid: an error."""
    ratio = values.to(torch.float64) / scale
    ints = torch.round(ratio)
    if ints.numel() and float((ratio - ints).abs().max()) > 0.25:
        raise RuntimeError(f"{what} is not on its producer's grid (not in the exact simulation, or a wrong scale)")
    return ints


@dataclass
class ExactStep:
    """One module's part of the integer program, run on float64 integers.

    ``inputs[k]`` arrives as a real-valued tensor at ``input_scales[k]`` (broadcast against it in the
    module's layout), as an :class:`IntTensor` (its integers are taken as they are), or, for the image,
    quantized as the program quantizes it (:func:`~vitquant.integer.execute.quantize_image`).
    ``__call__`` returns ``y_int · output_scale`` (float64)."""

    module: str
    ops: list[Op]
    inputs: list[str]
    input_scales: list[torch.Tensor | None]
    output_scale: torch.Tensor
    consts: dict[str, torch.Tensor] = field(repr=False)
    image: tuple[float, int, int] | None = None  # the program's input quantizer (scale, zero point, bits)

    def integers(self, *values: torch.Tensor | IntTensor) -> list[torch.Tensor]:
        """The integers of the inputs: ``round(v / S)`` (exact, see the module docstring)."""
        if len(values) != len(self.inputs):
            raise RuntimeError(f"{self.module}: exact step takes {len(self.inputs)} inputs, got {len(values)}")
        out = []
        for value, name, scale in zip(values, self.inputs, self.input_scales):
            if isinstance(value, IntTensor):
                out.append(value.ints.to(torch.float64))
            elif scale is None:
                assert self.image is not None
                out.append(quantize_image(value, *self.image).to(torch.float64))
            else:
                out.append(read_back(value, scale, f"{self.module}: input {name}"))
        return out

    def run(self, *ints: torch.Tensor) -> torch.Tensor:
        """The step's ops on float64 integers; its output integers."""
        env = dict(zip(self.inputs, ints))
        for op in self.ops:
            consts = {role: self.consts[name] for role, name in op.constants.items()}
            env[op.output] = OPS[op.kind]([env[n] for n in op.inputs], consts, op.attrs, _CTX)
        return env[self.ops[-1].output]

    def __call__(self, *values: torch.Tensor | IntTensor) -> torch.Tensor:
        return self.run(*self.integers(*values)) * self.output_scale


def build_step(module: str, ops: Sequence[Op], tensors: dict[str, torch.Tensor], scales: dict[str, torch.Tensor | None],
               bounds: dict[str, int], image: tuple[float, int, int]) -> ExactStep:
    """The step of ``module`` from its ops (in program order): inputs are the values they read that none
    of them produces, in order of first use; the output is the last op's."""
    produced = {op.output for op in ops}
    inputs: list[str] = []
    for op in ops:
        for n in op.inputs:
            if n not in produced and n not in inputs:
                inputs.append(n)
    for name in inputs + [ops[-1].output]:
        if name != "input" and bounds[name] >= 2**READ_BACK_BITS:
            raise RangeError(f"{module}: integers of {name} may reach {bounds[name]} (>= 2^{READ_BACK_BITS}); "
                             "they cannot cross a module boundary of the exact simulation exactly")
    consts = {t: prepare_constant(tensors[t], FLOAT) for op in ops for t in op.constants.values()}
    out_scale = scales[ops[-1].output]
    assert out_scale is not None
    return ExactStep(module, list(ops), inputs, [None if n == "input" else scales[n] for n in inputs],
                     out_scale.to(torch.float64), consts, image if "input" in inputs else None)


def enable_exact(qmodel: nn.Module, plan: VitPlan | None = None) -> VitPlan:
    """Switch the calibrated ViT ``qmodel`` to the exact simulation of its integer program (``plan``,
    default :func:`~vitquant.integer.convert.plan_vit`); returns the plan (its ``program`` is what
    :func:`~vitquant.integer.convert.convert_vit` gives). The steps are a snapshot of the calibrated
    quantizers and weights: after changing them, enable it again."""
    from vitquant.integer.convert import plan_vit

    plan = plan_vit(qmodel) if plan is None else plan
    disable_exact(qmodel)
    for name, step in plan.steps.items():
        if name == EMBEDDING:  # timm's VisionTransformer._pos_embed, for this instance only
            qmodel._pos_embed = step  # type: ignore[assignment]
        else:
            qmodel.get_submodule(name).exact = step
    return plan


def disable_exact(qmodel: nn.Module) -> None:
    """Back to the fake-quantized arithmetic (a no-op on a model not in the exact simulation)."""
    qmodel.__dict__.pop(EMBEDDING, None)
    for module in qmodel.modules():
        module.__dict__.pop("exact", None)


def is_exact(qmodel: nn.Module) -> bool:
    return EMBEDDING in qmodel.__dict__


@contextmanager
def exact_simulation(qmodel: nn.Module, plan: VitPlan | None = None) -> Iterator[VitPlan]:
    """``with exact_simulation(qmodel) as plan:`` the model computes ``plan.program``'s logits."""
    plan = enable_exact(qmodel, plan)
    try:
        yield plan
    finally:
        disable_exact(qmodel)


def exact_integer_logits(qmodel: nn.Module, images: torch.Tensor, plan: VitPlan) -> torch.Tensor:
    """The integer logits of the exact simulation: ``round(qmodel(images) / output_scale)`` (float64
    integers; exact, see the module docstring). ``qmodel`` must be in the exact simulation of ``plan``."""
    with torch.no_grad():
        logits = qmodel(images).to(torch.float64)
    return read_back(logits, plan.program.output_scale, "the model's logits")


@dataclass(frozen=True)
class Agreement:
    """Integer logits of the exact simulation against the program's, per image: ``identical`` images
    equal on every class, ``within_one`` at most one least significant bit (of the output scale) apart
    on every class (identical ones included), ``max_lsb`` the largest difference. By construction every
    image should be identical (see the module docstring); the other counts say how far a failure is."""

    images: int
    identical: int
    within_one: int
    max_lsb: int

    def __add__(self, other: Agreement) -> Agreement:
        return Agreement(self.images + other.images, self.identical + other.identical,
                         self.within_one + other.within_one, max(self.max_lsb, other.max_lsb))

    @classmethod
    def of(cls, exact_ints: torch.Tensor, program_ints: torch.Tensor) -> Agreement:
        """``exact_ints``, ``program_ints``: ``[images, classes]`` integers (any dtype)."""
        diff = (exact_ints.to(torch.float64) - program_ints.to(torch.float64)).abs().amax(dim=-1)
        return cls(int(diff.numel()), int((diff == 0).sum()), int((diff <= 1).sum()),
                   int(diff.max()) if diff.numel() else 0)
