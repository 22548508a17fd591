"""Q-ViT's Information Rectification Module (IRM; Li et al., NeurIPS 2022), folded away for inference.

Q-ViT rectifies the distributions of the queries and keys before their quantizers,

    Q(q') with q' = γ ⊙ (q - μ(q)) / sqrt(σ²(q) + ε) + β,    the same for k,

with learnable γ, β: a quantized q (or k) carries at most the entropy ½·log(2πe·γ²(σ² + ε)) of a
Gaussian, and the learned γ lets training raise it (the paper's "information entropy maximization").
Here μ, σ², γ and β are per head and channel (``[heads, head_dim]``) and the module sits in the
attention's ``q_rectify`` / ``k_rectify`` slots (:mod:`vitquant.nn.attention`), before q is scaled.

**Statistics, and what is folded.** The published code normalizes each token's q over its head_dim
channels (a LayerNorm), which depends on the token and cannot be folded away. Here the statistics are
BatchNorm's: while training, μ and σ² (biased) are those of the current batch over images and tokens,
summed over every process under ``torchrun`` (as SyncBatchNorm does, so two processes of b images train
exactly as one of 2b), and running estimates follow with momentum 0.1; in evaluation the running
estimates are used. The evaluation-mode IRM is then an affine map per head and channel,

    q' = a ⊙ q + b,   a = γ / sqrt(σ²_run + ε),   b = β - a ⊙ μ_run,

and :func:`fold_rectifiers` folds it into the rows of ``qkv`` that produce q and k: W' = a ⊙ W,
bias' = a ⊙ bias + b, and the weight quantizer's step per output channel Δ' = |a| Δ (zero point
mirrored, z' = 2^b - 1 - z, where a < 0), so the folded layer emits a·(its codes) on the same grid. The
inference outputs are those of the evaluation-mode IRM up to float rounding (one float32 product
a·W instead of two); the batch statistics of training are not what is folded.

**Initialisation.** The running statistics start as the mean and variance of q and k on the
calibration images, γ = sqrt(σ² + ε) and β = μ: the module starts as the identity on the calibrated
model, exactly (it computes x + (x - μ)·(γ - σ)/σ + (β - μ), whose corrections are then 0: at W4A4 a
rounding difference of one ulp would flip codes at ties and change the model's predictions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from vitquant.errors import ConfigError, NumericalError
from vitquant.nn.attention import AttentionPoints, attentions
from vitquant.nn.hooks import run_hooked
from vitquant.nn.linear import QuantLinear
from vitquant.nn.quant_point import Mode
from vitquant.quantizers.uniform import UniformQuantizer

EPS = 1e-5
MOMENTUM = 0.1


class InformationRectifier(nn.Module):
    """q' = γ ⊙ (q - μ) / sqrt(σ² + ε) + β per head and channel of ``[..., heads, tokens, head_dim]``
    (batch statistics while training, running ones in evaluation; see the module docstring)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float = EPS, momentum: float = MOMENTUM) -> None:
        super().__init__()
        if mean.dim() != 2 or mean.shape != var.shape:
            raise ConfigError(f"IRM statistics must be [heads, head_dim], got {tuple(mean.shape)} and {tuple(var.shape)}")
        self.eps, self.momentum = eps, momentum
        mean = mean.detach().to(torch.float32).unsqueeze(1)  # [heads, 1, head_dim]: broadcast over tokens
        var = var.detach().to(torch.float32).clamp(min=0).unsqueeze(1)
        self.weight = nn.Parameter(torch.sqrt(var + eps))  # γ
        self.bias = nn.Parameter(mean.clone())  # β
        self.register_buffer("running_mean", mean.clone())
        self.register_buffer("running_var", var.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var = _batch_moments(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        # γ(x - μ)/σ + β written as x plus a correction, so that γ = σ, β = μ give back x exactly
        std = torch.sqrt(var + self.eps)
        return (x + (x - mean) * ((self.weight - std) / std) + (self.bias - mean)).to(x.dtype)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) ``[heads, head_dim]`` of the evaluation-mode map q' = a ⊙ q + b (float64)."""
        with torch.no_grad():
            a = self.weight.double() / torch.sqrt(self.running_var.double() + self.eps)
            b = self.bias.double() - a * self.running_mean.double()
        return a.squeeze(1), b.squeeze(1)

    def extra_repr(self) -> str:
        heads, _, dim = self.weight.shape
        return f"heads={heads}, head_dim={dim}, eps={self.eps}, momentum={self.momentum}"


def _batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance ``[heads, 1, head_dim]`` of x over every axis but heads (-3) and
    channels (-1), over every process of a process group (summed with gradient), in float64."""
    dims = [d for d in range(x.dim()) if d not in (x.dim() - 3, x.dim() - 1)]
    x64 = x.double()
    moments = torch.stack([x64.sum(dims, keepdim=True), (x64 * x64).sum(dims, keepdim=True)])
    count = torch.tensor(float(x.numel() // (x.shape[-3] * x.shape[-1])), dtype=torch.float64, device=x.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        moments = all_reduce(moments)
        dist.all_reduce(count)
    mean = moments[0] / count
    var = (moments[1] / count - mean * mean).clamp(min=0)
    return mean.reshape(mean.shape[-3:]), var.reshape(var.shape[-3:])


def _qk_shape(name: str, attn: AttentionPoints) -> tuple[int, int]:
    """(heads, head_dim) of an attention whose ``qkv`` output is [q | k | v], each heads x head_dim."""
    for norm in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, norm, nn.Identity()), nn.Identity):
            raise ConfigError(f"{name}: the attention normalizes q and k itself ({norm}); train without the IRM (--no-irm)")
    qkv = attn.qkv  # type: ignore[attr-defined]
    heads = int(attn.num_heads)  # type: ignore[attr-defined]
    if not isinstance(qkv, QuantLinear) or qkv.out_features % (3 * heads):
        raise ConfigError(f"{name}: the IRM needs one qkv Linear with [q | k | v] outputs of {heads} heads each")
    return heads, qkv.out_features // (3 * heads)


def measure_qk(model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per attention: the mean and (biased) variance ``[heads, head_dim]`` of q and of k over ``batches``
    (every image and token), as (mean_q, var_q, mean_k, var_k) in float64, read at the ``qkv`` outputs."""
    sums: dict[str, list[torch.Tensor]] = {}

    def record(name: str):
        def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            rows = out.detach().double().reshape(-1, out.shape[-1])
            moments = [torch.tensor(float(rows.shape[0]), dtype=torch.float64), rows.sum(0), (rows * rows).sum(0)]
            sums[name] = moments if name not in sums else [a + b for a, b in zip(sums[name], moments)]
        return hook

    shapes = {name: _qk_shape(name, attn) for name, attn in attentions(model)}
    if not shapes:
        raise ConfigError(f"the IRM needs attention layers; {type(model).__name__} has none prepared")
    run_hooked(model, batches, [(attn.qkv, record(name)) for name, attn in attentions(model)])  # type: ignore[attr-defined]
    out = {}
    for name, (count, total, squares) in sums.items():
        heads, dim = shapes[name]
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0)
        qk = heads * dim
        out[name] = (mean[:qk].reshape(heads, dim), var[:qk].reshape(heads, dim),
                     mean[qk:2 * qk].reshape(heads, dim), var[qk:2 * qk].reshape(heads, dim))
    return out


def install_rectifiers(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[InformationRectifier]:
    """Put an IRM before the q and k quantizers of every attention of ``model`` (in place), started
    from the statistics of q and k on ``batches``; returns them (q and k of each attention, in order)."""
    stats = measure_qk(model, batches)
    installed: list[InformationRectifier] = []
    for name, attn in attentions(model):
        mean_q, var_q, mean_k, var_k = (t.to(attn.qkv.weight.device) for t in stats[name])  # type: ignore[attr-defined]
        attn.q_rectify = InformationRectifier(mean_q, var_q).train(attn.training)  # in the model's mode
        attn.k_rectify = InformationRectifier(mean_k, var_k).train(attn.training)
        installed += [attn.q_rectify, attn.k_rectify]
    return installed


def fold_rectifiers(model: nn.Module) -> int:
    """Fold every attention's IRM (evaluation mode) into its ``qkv`` layer and remove it (in place; see
    the module docstring); returns how many attentions were folded."""
    folded = 0
    for name, attn in attentions(model):
        if attn.q_rectify is None and attn.k_rectify is None:
            continue
        if not isinstance(attn.q_rectify, InformationRectifier) or not isinstance(attn.k_rectify, InformationRectifier):
            raise ConfigError(f"{name}: only an IRM on both q and k folds into qkv")
        a_q, b_q = attn.q_rectify.affine()
        a_k, b_k = attn.k_rectify.affine()
        _fold_rows(name, attn.qkv, torch.cat([a_q.flatten(), a_k.flatten()]), torch.cat([b_q.flatten(), b_k.flatten()]))  # type: ignore[attr-defined]
        attn.q_rectify = attn.k_rectify = None
        folded += 1
    return folded


def _fold_rows(name: str, layer: QuantLinear, a: torch.Tensor, b: torch.Tensor) -> None:
    """Rows 0..len(a)-1 of ``layer`` become a ⊙ (row) + b: weight, bias and the weight quantizer's step."""
    if (a == 0).any() or not torch.isfinite(a).all() or not torch.isfinite(b).all():
        raise NumericalError(f"{name}: the IRM cannot be folded (γ = 0 or non-finite statistics)")
    rows = layer.out_features
    a = torch.cat([a, torch.ones(rows - a.numel(), dtype=a.dtype, device=a.device)])
    b = torch.cat([b, torch.zeros(rows - b.numel(), dtype=b.dtype, device=b.device)])
    with torch.no_grad():
        layer.weight.copy_((layer.weight.double() * a[:, None]).to(layer.weight.dtype))
        bias = b if layer.bias is None else layer.bias.double() * a + b
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
        else:
            layer.bias.copy_(bias.to(layer.bias.dtype))
    quantizer = layer.weight_quantizer
    if layer.mode is Mode.FLOAT or quantizer is None:
        return
    if not isinstance(quantizer, UniformQuantizer):
        raise ConfigError(f"{name}: the IRM folds into a uniform qkv weight quantizer only, got {quantizer!r}")
    scale = (quantizer.scale.double().expand(rows, 1) * a.abs()[:, None]).to(torch.float32)
    zero = quantizer.zero_point.expand(rows, 1)
    zero = torch.where(a[:, None] < 0, quantizer.qmax - zero, zero)
    layer.set_weight_quantizer(UniformQuantizer(quantizer.bits, scale, zero))
