"""One block's reconstruction: train its quantizers so its output matches the full-precision block.

    min  ‖ f̂(x̂; V, Δ) - f(x) ‖²  +  λ Σ_layers Σ 1 - |2h(V) - 1|^β          (BRECQ, Li et al., ICLR 2021)

``x̂`` is the block's input in the quantized model (the blocks before it already reconstructed),
``f(x)`` the full-precision block's output on the full-precision input; the squared error is summed
over channels and averaged over tokens and images (BRECQ's), optionally weighted per element
(``weights``: BRECQ's Fisher approximation, :mod:`vitquant.reconstruction.fisher`). V are the
weights' rounding variables (:class:`~vitquant.quantizers.trainable.AdaRoundWeight`), Δ the steps of
the trainable activation quantizers (:class:`~vitquant.quantizers.trainable.LSQActivation`); the rest
stay frozen.

:class:`TrainableBlock` is the explicit swap: ``install`` replaces the block's fitted quantizers with
trainable stand-ins, ``harden`` puts ordinary fitted quantizers back, ``restore`` the original ones,
``revert`` (after ``harden``) the original weights and quantizers. A unit whose error on the
reconstruction images is higher after hardening than before (a short schedule can leave many rounding
variables between 0 and 1, where the hard rounding then differs from the soft one) is reverted: it
keeps its calibrated quantizers, and its report says so (``reverted``).
Its integer non-linear kernels (``kernels``, :data:`~vitquant.nn.nonlinear.TRAIN_KERNELS`) run as their
float ops meanwhile (``float``, reconstruction's choice) or stay in the forward pass with the float op's
gradient passed straight through (``ste``, :func:`~vitquant.nn.nonlinear.straight_through`, what
quantization-aware training uses by default); their input points are not trained either way. The
weights' stand-in is AdaRound's learned rounding here; quantization-aware training (:mod:`vitquant.qat`)
swaps a whole model with LSQ weights (:class:`~vitquant.quantizers.trainable.LSQWeight`) instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vitquant.errors import ConfigError
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.nonlinear import TRAIN_KERNELS, QuantNonLinear
from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.quantizers.trainable import AdaRoundWeight, LSQActivation, LSQWeight, trainable_activation
from vitquant.quantizers.uniform import UniformQuantizer
from vitquant.reconstruction.config import ReconstructionConfig

CHUNK = 64  # images per forward when measuring a block's error over all images

#: a trainable weight source built from a layer's fitted uniform quantizer and weight; it has ``harden()``
#: -> (weight on the grid, fitted quantizer)
WeightSource = Callable[[UniformQuantizer, torch.Tensor], AdaRoundWeight | LSQWeight]


def trainable_layers(block: nn.Module) -> list[WeightQuantMixin]:
    """The block's quantized layers whose weights can learn their rounding (uniform weight quantizers)."""
    return [
        m for m in block.modules()
        if isinstance(m, WeightQuantMixin) and m.mode is Mode.QUANTIZE
        and isinstance(m.weight_quantizer, UniformQuantizer) and m.weight_quantizer.trainable
    ]


def _activation_points(block: nn.Module) -> list[QuantPoint]:
    """Fitted points that quantize in the block's forward (kernel input points excluded: the kernels
    run as float ops while the block trains, or pass the float op's gradient straight through)."""
    kernel_points = {id(m) for k in block.modules() if isinstance(k, QuantNonLinear) for m in k.slots.modules()}
    return [
        m for m in block.modules()
        if isinstance(m, QuantPoint) and id(m) not in kernel_points and m.quantizer is not None and m.mode is Mode.QUANTIZE
    ]


class TrainableBlock:
    """The swap of one block's (or a whole model's) quantizers for trainable ones (see the module
    docstring); ``weight_source`` makes each weight's stand-in (AdaRound by default), ``kernels`` says how
    the active integer kernels run while training (``float`` by default), ``revertible`` whether
    :meth:`revert` can undo :meth:`harden` (it keeps a copy of the weights)."""

    def __init__(
        self, block: nn.Module, drop_prob: float = 0.0, generator: torch.Generator | None = None,
        weight_source: WeightSource = AdaRoundWeight, kernels: str = "float", revertible: bool = False,
    ) -> None:
        if kernels not in TRAIN_KERNELS:
            raise ConfigError(f"kernels while training must be one of {', '.join(TRAIN_KERNELS)}, got {kernels!r}")
        self.block = block
        self.kernel_mode = kernels
        self.layers = trainable_layers(block)
        self.points = _activation_points(block)
        self.kernels = [m for m in block.modules() if isinstance(m, QuantNonLinear) and m.active is not None]
        self.saved_points = [p.quantizer for p in self.points]
        # revertible: a copy of the weights (harden() overwrites them) for revert()
        self.saved_weights = (
            [(layer.weight.detach().clone(), layer.weight_quantizer) for layer in self.layers] if revertible else None
        )
        self.saved_kernels = [m.active for m in self.kernels]
        self.roundings = [weight_source(layer.weight_quantizer, layer.weight) for layer in self.layers]  # type: ignore[arg-type]
        self.activations = [trainable_activation(p.quantizer, drop_prob, generator) for p in self.points]  # type: ignore[arg-type]

    def weight_parameters(self) -> list[nn.Parameter]:
        """The parameters of the weights' stand-ins (AdaRound: V; LSQ: the latent weight and its step)."""
        return [p for r in self.roundings for p in r.parameters()]

    def step_parameters(self) -> list[nn.Parameter]:
        return [a.scale for a in self.activations if isinstance(a, LSQActivation)]

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's rounding regulariser summed over the layers."""
        return torch.stack([r.regularizer(beta) for r in self.roundings]).sum() if self.roundings else torch.zeros(())  # type: ignore[union-attr]

    def install(self) -> None:
        for layer, rounding in zip(self.layers, self.roundings):
            layer.set_weight_rounding(rounding)
        for point, activation in zip(self.points, self.activations):
            point.quantizer = activation  # type: ignore[assignment]
        if self.kernel_mode == "float":
            for kernel in self.kernels:
                kernel.activate(None)

    def harden(self) -> None:
        """Fitted quantizers with the learned values: each weight on its learned grid point, each
        trained step in a UniformQuantizer."""
        for layer, rounding in zip(self.layers, self.roundings):
            weight, quantizer = rounding.harden()
            with torch.no_grad():
                layer.weight.copy_(weight.to(layer.weight.dtype))
            layer.set_weight_rounding(None)
            layer.set_weight_quantizer(quantizer)
        for point, activation in zip(self.points, self.activations):
            point.set_quantizer(activation.harden())
        self._restore_kernels()

    def restore(self) -> None:
        """Back to the quantizers the block had before :meth:`install` (nothing learned is kept)."""
        for layer in self.layers:
            layer.set_weight_rounding(None)
        for point, quantizer in zip(self.points, self.saved_points):
            point.quantizer = quantizer
        self._restore_kernels()

    def revert(self) -> None:
        """After :meth:`harden`: the weights and fitted quantizers the block had before :meth:`install`
        (only for a swap made ``revertible``)."""
        if self.saved_weights is None:
            raise RuntimeError("revert() needs a TrainableBlock made with revertible=True")
        for layer, (weight, quantizer) in zip(self.layers, self.saved_weights):
            with torch.no_grad():
                layer.weight.copy_(weight)
            layer.set_weight_quantizer(quantizer)  # type: ignore[arg-type]
        for point, quantizer in zip(self.points, self.saved_points):
            point.set_quantizer(quantizer)  # type: ignore[arg-type]

    def _restore_kernels(self) -> None:
        for kernel, family in zip(self.kernels, self.saved_kernels):
            kernel.activate(family)


@dataclass(frozen=True)
class BlockReport:
    """One block: its output error before and after (on every reconstruction image), what trained, time."""

    name: str
    loss_before: float
    loss_after: float
    layers: int  # weights with learned rounding
    steps: int  # activation steps trained (LSQ)
    frozen: int  # activation quantizers kept as calibrated
    seconds: float
    reverted: bool = False  # the hardened result was worse than before: calibrated quantizers kept

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def output_error(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error, times ``weights`` element by element when given, summed over channels (the last
    dimension) and averaged over tokens and images."""
    squared = (out - target) ** 2
    return (squared if weights is None else squared * weights).sum(-1).mean()


def block_error(
    block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> float:
    """The reconstruction error (:func:`output_error`) over every input, in chunks."""
    total = 0.0
    chunks = weights.split(CHUNK) if weights is not None else [None] * len(inputs.split(CHUNK))
    with torch.no_grad():
        for x, y, w in zip(inputs.split(CHUNK), targets.split(CHUNK), chunks):
            total += float(output_error(block(x), y, w)) * x.shape[0]
    return total / inputs.shape[0]


def reconstruct_block(
    block: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: ReconstructionConfig,
    seed: int,
    name: str = "block",
    progress: bool = False,
    weights: torch.Tensor | None = None,
) -> BlockReport:
    """Train ``block``'s trainable quantizers on (``inputs``, ``targets``) and harden them (in place);
    ``weights`` (shaped like ``targets``) weight the squared error element by element."""
    if weights is not None and weights.shape != targets.shape:
        raise ConfigError(f"{name}: error weights of shape {tuple(weights.shape)} for outputs of shape {tuple(targets.shape)}")
    start = time.perf_counter()
    before = block_error(block, inputs, targets, weights)
    generator = torch.Generator().manual_seed(seed)
    swap = TrainableBlock(block, config.drop_prob, generator, revertible=True)
    swap.install()
    try:
        _train(swap, inputs, targets, weights, config, generator, name, progress)
    except BaseException:
        swap.restore()
        raise
    swap.harden()
    after = block_error(block, inputs, targets, weights)
    reverted = after > before
    if reverted:
        swap.revert()
        after = block_error(block, inputs, targets, weights)
    frozen = len(swap.activations) - len(swap.step_parameters())
    return BlockReport(name, before, after, len(swap.layers), len(swap.step_parameters()), frozen,
                       time.perf_counter() - start, reverted)


def _train(
    swap: TrainableBlock, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
    config: ReconstructionConfig, generator: torch.Generator, name: str, progress: bool,
) -> None:
    """Adam on V (constant rate) and Δ (cosine to 0), ``config.iters`` steps of random batches."""
    optimizers = []
    if swap.weight_parameters():
        optimizers.append(torch.optim.Adam(swap.weight_parameters(), lr=config.weight_lr))
    steps = swap.step_parameters()
    schedule = None
    if steps:
        act_opt = torch.optim.Adam(steps, lr=config.act_lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(act_opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / config.iters)))
        optimizers.append(act_opt)
    modules = [*swap.roundings, *swap.activations]
    for m in modules:
        m.train()
    n, batch = inputs.shape[0], min(config.batch_size, inputs.shape[0])
    bar = tqdm(range(config.iters), desc=f"reconstructing {name}", unit="step", disable=not progress, leave=False)
    with torch.enable_grad():
        for step in bar:
            index = torch.randperm(n, generator=generator)[:batch]
            rec = output_error(swap.block(inputs[index]), targets[index], None if weights is None else weights[index])
            beta = config.beta_at(step)
            loss = rec if beta is None or config.reg_weight == 0 else rec + config.reg_weight * swap.regularizer(beta)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            if schedule is not None:
                schedule.step()
            if progress and (step % 10 == 0 or step == config.iters - 1):
                bar.set_postfix(rec=f"{float(rec.detach()):.4g}", loss=f"{float(loss.detach()):.4g}")
    for m in modules:
        m.eval()
