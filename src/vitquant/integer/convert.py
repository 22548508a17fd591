"""Convert a calibrated ViT/DeiT (timm ``VisionTransformer``) into an integer program.

Every value of the program carries, at conversion time, a scale (one per tensor, channel or head) and
a bound on its integers. Where the scale changes the converter emits a dyadic requantization
(:func:`~vitquant.kernels.dyadic.dyadic`: ``m / 2^s``, m < 2^16, fewer bits where ``bound · m`` would
reach 2^51) into the code range of the next quantizer, so the program computes, in integers, what the
fake-quantized model computes in float:

- weights ``W_int = q_w - z_w`` (per output channel step S_w), biases ``round(b / (S_x·S_w))``, the
  accumulator at S_x·S_w;
- the patch embedding as patches times the flattened kernel; class token and position embedding rounded
  onto the first residual scale;
- the residual stream is integer, as the calibrated model's integer residual adds
  (:class:`~vitquant.nn.residual.QuantResidualAdd`) define it: each add requantizes both operands onto
  its fixed-point step S_r and adds the integers; the patch embedding (with class token and position
  embedding) starts on the first add's step;
- LayerNorm, GELU and Softmax run their integer kernels (the calibrated model must have one active at
  every non-linear layer); q@kᵀ is an integer matmul per head; attn@v is an integer matmul (uniform
  attention quantizer) or, for BitLog2, shifted sums of v (:func:`~vitquant.integer.ops.bitlog2_av`);
- attn@v for log√2, AdaLog, twin-uniform and per-head uniform attention maps: the code of each softmax integer by
  comparisons with per-head thresholds, its level from a table of integers (the level's mantissa on one
  common shift), one integer matmul (:func:`level_table`, op ``table_av``);
- the class token's logits are requantized per class onto one output scale (DeiT-distilled: the class
  and distillation tokens' logits on one scale, added, the average's halving folded into that scale);
- AdaLog's post-GELU (``Q(GELU(x) + c)`` with fc2's bias less ``c·Ŵ·1``): the GELU kernel, the shift
  and the quantizer folded into one integer table over the GELU's input codes (:func:`shifted_gelu_table`,
  op ``lookup``), fc2 an integer matmul of the looked-up levels.

:func:`plan_vit` is the one derivation: it builds the program and records which module of the model
computes each op, so that the same ops and constants (dyadic multipliers included) become the model's
exact simulation (:mod:`vitquant.integer.exact`); :func:`convert_vit` returns its program.

Accumulator bounds are derived from the code ranges and the worst case of the weights; anything that
could reach 2^51 is rejected with :class:`~vitquant.errors.RangeError`. Formats without an integer
path (float non-linear ops or residual adds, per-channel post-GELU tables, average-pooled heads, register tokens)
are refused with :class:`~vitquant.errors.ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vitquant.errors import ConfigError, RangeError
from vitquant.integer.exact import EMBEDDING, ExactStep, build_step
from vitquant.integer.ops import pack_nibbles
from vitquant.integer.program import IntegerProgram, Op
from vitquant.kernels.arith import FLOAT
from vitquant.kernels.dyadic import dyadic
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.nonlinear import QuantNonLinear
from vitquant.nn.quant_point import Mode, QuantPoint
from vitquant.nn.residual import QuantResidualAdd
from vitquant.nn.shift import ShiftedActivation
from vitquant.quantizers.base import Quantizer
from vitquant.quantizers.bitlog2 import BitLog2Quantizer
from vitquant.quantizers.fixed_point import FixedPointQuantizer
from vitquant.quantizers.uniform import UniformQuantizer

SHIFT_REFUSAL = ("an input shift has an integer path only behind a shifted GELU (AdaLog post-GELU) of the same MLP; "
                 "use a uniform post-GELU quantizer")
SCALE_PREFIX = "scale:"  # program tensors holding each value's float scale (see _Builder.program_tensors)
EXACT_BITS = 51  # every integer of the program stays below 2^51 (float64 twin exact, int64 far from overflow)
MULTIPLIER_BITS = 31  # capped per site so that bound · m < 2^51


@dataclass
class Value:
    """A program value at conversion time: its name, scale (float64, broadcastable) and integer bound."""

    name: str
    scale: torch.Tensor
    bound: int


class _Builder:
    """Emits the program's ops and records, for the exact simulation, each value's scale and bound and
    which module of the model computes each op (:meth:`owned`; ops outside any are the model's own
    layout steps: heads, token selection)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.scales: dict[str, torch.Tensor | None] = {}
        self.bounds: dict[str, int] = {}
        self.owners: dict[str, list[Op]] = {}
        self._owner: str | None = None
        self._count = 0

    @contextmanager
    def owned(self, module: str | None) -> Iterator[None]:
        """Ops emitted meanwhile are computed by ``module`` (its name in the model; ``None``: by the
        model's own code) in the exact simulation."""
        outer, self._owner = self._owner, module
        try:
            yield
        finally:
            self._owner = outer

    def program_tensors(self) -> dict[str, torch.Tensor]:
        """The program's constants and, as ``scale:<value>`` (:data:`SCALE_PREFIX`), the float scale of every value
        an op produces: no op reads them; a format that runs the values in float (ONNX QDQ) does."""
        scales = {f"{SCALE_PREFIX}{name}": torch.as_tensor(s).detach().to(torch.float64).clone()
                  for name, s in self.scales.items() if s is not None}
        return {**self.tensors, **scales}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self._count}:{hint}"

    def const(self, hint: str, tensor: torch.Tensor) -> str:
        key = self.name(hint)
        self.tensors[key] = tensor.detach().contiguous().clone()
        return key

    def emit(self, kind: str, inputs: Sequence[Value | str], hint: str, scale: torch.Tensor, bound: int,
             attrs: dict | None = None, consts: dict[str, torch.Tensor] | None = None, output: str | None = None) -> Value:
        _check_bound(bound, f"{kind} ({hint})")
        names = {role: self.const(f"{hint}.{role}", t) for role, t in (consts or {}).items()}
        out = output or self.name(hint)
        op = Op(kind, tuple(v.name if isinstance(v, Value) else v for v in inputs), out, attrs or {}, names)
        self.ops.append(op)
        self.scales[out], self.bounds[out] = scale, bound
        if self._owner is not None:
            self.owners.setdefault(self._owner, []).append(op)
        return Value(out, scale, bound)

    # ------------------------------------------------------------------ requantization
    def requant(self, x: Value, scale: torch.Tensor, low: torch.Tensor, high: torch.Tensor, hint: str,
                inv_scale: torch.Tensor | None = None, output: str | None = None) -> Value:
        """``x`` onto ``scale`` with codes clamped to [low, high] (all broadcast against x). The ratio is
        ``S_x / scale``, or ``S_x · inv_scale`` where the quantizer multiplies by a stored reciprocal (so
        that exact ties of the fake-quantized model stay exact ties here)."""
        ratio = (x.scale / scale if inv_scale is None else x.scale * inv_scale).double()
        bits = min(MULTIPLIER_BITS, EXACT_BITS - x.bound.bit_length())
        if bits < 8:
            raise RangeError(f"{hint}: integers up to {x.bound} leave no room for an 8-bit requantization multiplier")
        flat = ratio.reshape(-1).tolist()
        pairs = [dyadic(r, bits=bits) for r in flat]
        m = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(ratio.shape)
        s = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(ratio.shape)
        low = torch.as_tensor(low, dtype=torch.int64)
        high = torch.as_tensor(high, dtype=torch.int64)
        bound = int(max(low.abs().max(), high.abs().max()))
        return self.emit("requant", [x], hint, scale.double(), bound,
                         consts={"multiplier": m, "shift": s, "low": low, "high": high}, output=output)

    def requant_to_point(self, x: Value, point: QuantPoint, shape: Sequence[int] | None, hint: str) -> Value:
        """``x`` onto the codes ``q - z`` of ``point``'s uniform quantizer (params reshaped to ``shape``)."""
        q = _uniform(point)
        scale, zero, inv = q.scale.double(), q.zero_point.to(torch.int64), q.inv_scale.double()
        if shape is not None:
            scale, zero, inv = scale.reshape(shape), zero.reshape(shape), inv.reshape(shape)
        return self.requant(x, scale, -zero, q.qmax - zero, hint, inv_scale=inv)

    def residual(self, x: Value, add: nn.Module, hint: str) -> Value:
        """``x`` onto the fixed-point codes of the residual add ``add`` (its step S_r, ±(2^(b-1) - 1))."""
        q = _residual_quantizer(add, hint)
        top = torch.tensor(q.top)
        return self.requant(x, q.scale.double().reshape(()), -top, top, hint, inv_scale=q.inv_scale.double().reshape(()))

    # ------------------------------------------------------------------ layers
    def linear(self, x: Value, layer: nn.Module, hint: str, weight: torch.Tensor | None = None,
               shifted_input: bool = False) -> Value:
        """``x @ W_intᵀ + b_int`` of a calibrated QuantLinear/QuantConv2d (``weight``: its 2-D view).
        ``shifted_input``: ``x`` already holds the shifted activation's codes (:func:`shifted_gelu_table`),
        and the bias is the layer's own less ``c·Ŵ·1``, as the model computes it."""
        if not isinstance(layer, WeightQuantMixin) or layer.weight_quantizer is None:
            raise ConfigError(f"{hint}: the layer is not calibrated")
        if layer.input_shift and not shifted_input:
            raise ConfigError(f"{hint}: {SHIFT_REFUSAL}")
        if not isinstance(layer.weight_quantizer, UniformQuantizer):
            raise ConfigError(f"{hint}: weights must be uniformly quantized, got {layer.weight_quantizer!r}")
        wq = layer.weight_quantizer
        view = wq.to_integer(layer.weight.detach())
        w_int = view.mantissa.flatten(1)
        w_scale = view.scale.reshape(-1)
        zero = wq.zero_point.to(torch.int64).reshape(-1)
        if x.scale.numel() != 1:
            raise ConfigError(f"{hint}: the input of a Linear must have one scale per tensor")
        acc_scale = x.scale.reshape(()) * w_scale  # [out]
        bias = layer.bias_for(layer.weight_fq)
        b_int = None if bias is None else torch.round(bias.detach().double() / acc_scale).to(torch.int64)
        bound = int((w_int.abs().sum(dim=1) * x.bound).max()) + (0 if b_int is None else int(b_int.abs().max()))
        # stored as the quantizer's codes q and one zero point per row (W = q - z): a byte per code, or
        # two 4-bit codes per byte up to 4 bits
        codes = w_int + zero.unsqueeze(1).expand_as(w_int)
        packed = wq.qmax <= 15
        consts = {"weight_codes": pack_nibbles(codes) if packed else codes.to(torch.uint8), "weight_zero": zero}
        if b_int is not None:
            consts["bias"] = b_int
        attrs = {"packed": 4, "in_features": int(codes.shape[1])} if packed else {}
        return self.emit("linear", [x], hint, acc_scale, bound, attrs=attrs, consts=consts)

    @staticmethod
    def kernel(module: QuantNonLinear, hint: str) -> tuple[nn.Module, dict]:
        """The active kernel slot of ``module`` and its op attributes (a float op, or an op with no integer
        kernel such as CLIP's QuickGELU, is refused)."""
        if not isinstance(module, QuantNonLinear):
            raise ConfigError(f"{hint}: {type(module).__name__} has no integer kernel (integer programs support "
                              "GELU, Softmax and LayerNorm); keep this model in the fake-quant form")
        if module.active is None:
            raise ConfigError(
                f"{module.layer_name or hint}: runs the float {module.op}; an integer program needs an integer "
                "kernel at every non-linear layer (--nonlinear ivit|ibert|mixed, or fqvit with GELU from another family)"
            )
        slot = module.slots[module.active]
        attrs = {"family": slot.kernel.family, "out_bits": slot.kernel.out_bits}
        return slot, attrs


def _check_bound(bound: int, what: str) -> None:
    if bound >= 2**EXACT_BITS:
        raise RangeError(f"{what}: integers may reach {bound} (>= 2^{EXACT_BITS}); the program cannot hold them exactly")


def _uniform(point: QuantPoint) -> UniformQuantizer:
    q = point.quantizer
    if point.mode is not Mode.QUANTIZE or not isinstance(q, UniformQuantizer):
        raise ConfigError(f"{point.point_name or point.role}: needs a calibrated uniform quantizer, got {q!r}")
    return q


def _per_head(point: QuantPoint, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, zero point, stored reciprocal), each [H], of a per-tensor or per-head uniform point."""
    q = _uniform(point)
    scale, zero, inv = q.scale.double().reshape(-1), q.zero_point.to(torch.int64).reshape(-1), q.inv_scale.double().reshape(-1)
    if scale.numel() not in (1, heads):
        raise ConfigError(f"{point.point_name}: needs one step per tensor or per head, got {scale.numel()}")
    return scale.expand(heads), zero.expand(heads), inv.expand(heads)


def _residual_quantizer(add: nn.Module, hint: str) -> FixedPointQuantizer:
    point = getattr(add, "residual_quant", None)
    if not isinstance(add, QuantResidualAdd) or point is None or point.mode is not Mode.QUANTIZE:
        raise ConfigError(
            f"{hint}: the residual add runs in float; an integer program needs integer residual adds "
            "(any --nonlinear kernel family makes them integer; op 'residual' of the non-linear config)"
        )
    q = point.quantizer
    if not isinstance(q, FixedPointQuantizer) or q.scale.numel() != 1:
        raise ConfigError(f"{hint}: the residual point needs a per-tensor fixed-point quantizer, got {q!r}")
    return q


@dataclass
class VitPlan:
    """The integer program of a calibrated ViT and the exact simulation of it: for each module that
    computes a part of the program (by name; :data:`~vitquant.integer.exact.EMBEDDING` for the model's
    class token and position embedding), the :class:`~vitquant.integer.exact.ExactStep` it runs."""

    program: IntegerProgram
    steps: dict[str, ExactStep]


def convert_vit(qmodel: nn.Module) -> IntegerProgram:
    """The integer program of a calibrated timm ``VisionTransformer`` (integer kernels and residual adds)."""
    return plan_vit(qmodel).program


def plan_vit(qmodel: nn.Module) -> VitPlan:
    """The program of :func:`convert_vit` and, from the same ops and constants, the exact simulation's
    steps (:mod:`vitquant.integer.exact`): the one place the dyadic constants are derived."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(qmodel, VisionTransformer):
        raise ConfigError(f"integer conversion supports ViT/DeiT (timm VisionTransformer) models, got {type(qmodel).__name__}")
    if qmodel.global_pool != "token" or getattr(qmodel, "reg_token", None) is not None or getattr(qmodel, "no_embed_class", False):
        raise ConfigError("integer conversion supports class-token models (with a distillation token or not) whose "
                          "position embedding covers the class token, without register tokens")
    distilled = getattr(qmodel, "dist_token", None) is not None
    qmodel.eval()
    b = _Builder()
    check_integer_path(b, qmodel)

    # ---------------------------------------------------------------- patch embedding
    conv = qmodel.patch_embed.proj
    point = _uniform(conv.input_quant)
    if point.scale.numel() != 1 or not isinstance(qmodel.patch_embed.norm, nn.Identity):
        raise ConfigError("the patch embedding needs a per-tensor input quantizer and no norm")
    if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError("the patch embedding must be a square, non-overlapping, unpadded convolution")
    x = Value("input", point.scale.double().reshape(()), int(max(point.zero_point.abs(), point.qmax - point.zero_point)))
    with b.owned("patch_embed.proj"):
        x = b.emit("patchify", [x], "patch_embed", x.scale, x.bound, attrs={"patch": conv.kernel_size[0]})
        x = b.linear(x, conv, "patch_embed.proj")
    with b.owned(EMBEDDING):
        x = b.residual(x, qmodel.blocks[0].add_attn, "patch_embed.out")
        s0 = x.scale
        prefix = torch.cat([qmodel.cls_token, qmodel.dist_token], dim=1) if distilled else qmodel.cls_token
        token = torch.round(prefix.detach().double() / s0).to(torch.int64)
        x = b.emit("prepend_token", [x], "cls_token", s0, max(x.bound, int(token.abs().max())), consts={"token": token})
        pos = torch.round(qmodel.pos_embed.detach().double() / s0).to(torch.int64)
        x = b.emit("add_const", [x], "pos_embed", s0, x.bound + int(pos.abs().max()), consts={"value": pos})

    # ---------------------------------------------------------------- blocks
    tokens = int(qmodel.patch_embed.num_patches) + int(qmodel.num_prefix_tokens)
    for i, block in enumerate(qmodel.blocks):
        _check_identity(block, i)
        x = compensated(b, x, block, f"blocks.{i}", partial(_vit_block, b, block=block, hint=f"blocks.{i}", tokens=tokens))

    # ---------------------------------------------------------------- head
    heads = [(qmodel.head, "head")] + ([(qmodel.head_dist, "head_dist")] if distilled else [])
    accs = []
    # LayerNorm is per token: the program normalizes the taken tokens only, the model (in the exact
    # simulation too) all of them, then takes its tokens
    for index, (head, name) in enumerate(heads):
        t = b.emit("take_token", [x], f"token{index}", x.scale, x.bound, attrs={"index": index})
        with b.owned("norm" if index == 0 else None):
            t = _layernorm(b, t, qmodel.norm, "norm" if index == 0 else f"norm.token{index}")
        with b.owned(name):
            t = b.requant_to_point(t, head.input_quant, None, f"{name}.in")
            accs.append(b.linear(t, head, name))
    out_scale = float(min(float(a.scale.min()) for a in accs))
    limit = torch.tensor(2**40)
    scale = torch.tensor(out_scale, dtype=torch.float64)
    if distilled:  # (head + head_dist) / 2: both on one scale, added, the halving in the output scale
        logits = []
        for a, (_, name) in zip(accs, heads):
            with b.owned(name):  # the model's (head + head_dist) / 2 adds and halves in float64
                logits.append(b.requant(a, scale, -limit, limit, f"{name}.logits"))
        b.emit("add", logits, "logits", scale, 2 * int(limit), output="logits")
        out_scale /= 2
    else:
        with b.owned("head"):
            b.requant(accs[0], scale, -limit, limit, "logits", output="logits")
    program = IntegerProgram(
        b.ops, b.program_tensors(), float(point.scale), int(point.zero_point), point.bits, out_scale,
        info={"model": type(qmodel).__name__, "residual_bits": _residual_quantizer(qmodel.blocks[0].add_attn, "blocks.0").bits},
    )
    image = (program.input_scale, program.input_zero_point, program.input_bits)
    steps = {module: build_step(module, ops, b.tensors, b.scales, b.bounds, image) for module, ops in b.owners.items()}
    return VitPlan(program, steps)


def check_integer_path(b: _Builder, qmodel: nn.Module) -> None:
    """Every non-linear step of ``qmodel`` integer (kernels named first), every residual add integer, no
    input shift: else :class:`ConfigError`."""
    modules = list(qmodel.named_modules())
    for name, module in modules:
        if isinstance(module, QuantNonLinear):
            b.kernel(module, name)
    for name, module in modules:
        if isinstance(module, QuantResidualAdd):
            _residual_quantizer(module, name)
        elif isinstance(module, WeightQuantMixin) and module.input_shift and not _behind_shifted_gelu(qmodel, name, module):
            raise ConfigError(f"{name}: {SHIFT_REFUSAL}")


def _behind_shifted_gelu(qmodel: nn.Module, name: str, layer: nn.Module) -> bool:
    """Whether ``layer`` is an MLP's fc2 whose activation is the :class:`ShiftedActivation` of its shift
    (AdaLog's post-GELU reparameterization), which :func:`shifted_gelu_table` converts."""
    if not name.endswith("mlp.fc2"):
        return False
    act = getattr(qmodel.get_submodule(name.rsplit(".", 1)[0]), "act", None)
    return isinstance(act, ShiftedActivation) and isinstance(act.act, QuantNonLinear) and act.shift == layer.input_shift


def _check_identity(block: nn.Module, i: int) -> None:
    for name in ("ls1", "ls2"):
        if not isinstance(getattr(block, name, nn.Identity()), nn.Identity):
            raise ConfigError(f"blocks.{i}.{name}: LayerScale has no integer path yet")
    attn = block.attn
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise ConfigError(f"blocks.{i}.attn.{name}: must be Identity for integer conversion")
    if not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
        raise ConfigError(f"blocks.{i}.mlp.norm: must be Identity for integer conversion")


def _layernorm(b: _Builder, x: Value, norm: QuantNonLinear, hint: str) -> Value:
    slot, attrs = b.kernel(norm, hint)
    xin = b.requant_to_point(x, slot.input_quant, None, f"{hint}.in")
    q = slot.input_quant.quantizer
    weight, bias = norm.kernel_args()
    channels = weight.numel()
    in_scale = q.scale.double().reshape(-1) if q.scale.numel() > 1 else q.scale.double().reshape(())
    _, out_scale = slot.kernel(torch.zeros(1, channels, dtype=torch.float64), in_scale, FLOAT, weight, bias)
    bound = 2**31 + int((bias.abs() / out_scale).max()) + 1
    return b.emit("layernorm", [xin], hint, out_scale.reshape(-1), bound, attrs=attrs,
                  consts={"scale": in_scale, "weight": weight, "bias": bias})


def _attention_branch(b: _Builder, x: Value, block: nn.Module, hint: str, tokens: int) -> Value:
    with b.owned(f"{hint}.norm1"):
        h = _layernorm(b, x, block.norm1, f"{hint}.norm1")
    y = attention(b, h, block.attn, hint, tokens)
    return _residual_add(b, x, y, block.add_attn, hint + ".attn", f"{hint}.add_attn")


#: emits the addition of a bias onto the q·kᵀ integers (Value at S_q·S_k per head) and returns the sum
LogitBias = Callable[[_Builder, Value], Value]


def attention(b: _Builder, h: Value, attn: nn.Module, hint: str, tokens: int, bias: LogitBias | None = None) -> Value:
    """Self-attention over ``tokens`` tokens of ``h`` [B, N, C] up to the proj accumulator: qkv, q·kᵀ per
    head (plus ``bias`` on its grid, Swin), the softmax kernel, attn·v, proj."""
    heads = attn.num_heads
    d = attn.qkv.weight.shape[0] // (3 * heads)  # timm's Swin WindowAttention keeps no head_dim
    with b.owned(f"{hint}.attn.qkv"):  # qkv emits the codes of q, k and v (per channel, before the heads split)
        h = b.requant_to_point(h, attn.qkv.input_quant, None, f"{hint}.attn.qkv.in")
        h = b.linear(h, attn.qkv, f"{hint}.attn.qkv")
    # q (scaled by attn.scale before its point), k and v, per head, laid out [3, H, d] on the channels
    scales, invs, zeros, qmax = [], [], [], []
    for point, factor in ((attn.qk.a_quant, attn.scale), (attn.qk.b_quant, 1.0), (attn.av.b_quant, 1.0)):
        s, z, inv = _per_head(point, heads)
        scales.append(s / factor)  # q·f quantized at S_q: q itself at S_q/f
        invs.append(inv * factor)
        zeros.append(z)
        qmax.append(_uniform(point).qmax)

    def per_channel(values: list[torch.Tensor]) -> torch.Tensor:  # [3][H] -> [3·H·d] in qkv's channel order
        return torch.stack(values).repeat_interleave(d, dim=1).reshape(-1)

    zero = per_channel(zeros)
    top = torch.tensor(qmax).repeat_interleave(heads * d)
    with b.owned(f"{hint}.attn.qkv"):
        qkv = b.requant(h, per_channel(scales), -zero, top - zero, f"{hint}.attn.qkv.out", inv_scale=per_channel(invs))
    # per head: q as the model hands it to its point (times attn.scale), k, v
    s_q = (scales[0] * attn.scale).reshape(1, heads, 1, 1)
    s_k = scales[1].reshape(1, heads, 1, 1)
    s_v = scales[2].reshape(1, heads, 1, 1)
    q, k, v = (b.emit("heads", [qkv], f"{hint}.attn.{n}", s, qkv.bound, attrs={"heads": heads, "which": w})
               for w, (n, s) in enumerate(zip("qkv", (s_q, s_k, s_v))))
    with b.owned(f"{hint}.attn.qk"):
        logits = b.emit("matmul", [q, k], f"{hint}.attn.qk", s_q * s_k, d * q.bound * k.bound, attrs={"transpose_b": True})
        if bias is not None:
            logits = bias(b, logits)
    slot, attrs = b.kernel(attn.softmax, f"{hint}.attn.softmax")
    _, p_scale = slot.kernel(torch.zeros(1, 4, dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64), FLOAT)
    with b.owned(f"{hint}.attn.softmax"):
        probs = b.emit("softmax", [logits], f"{hint}.attn.softmax", p_scale, 2**16, attrs=attrs,
                       consts={"scale": (s_q * s_k).reshape(-1)})
    with b.owned(f"{hint}.attn.av"):  # attn@v emits the codes of proj's input (per head, before the merge)
        ctx = _attention_values(b, probs, v, attn, s_v, heads, f"{hint}.attn.av", tokens)
        ctx = b.requant_to_point(ctx, attn.proj.input_quant, None, f"{hint}.attn.proj.in")
    ctx = b.emit("merge_heads", [ctx], f"{hint}.attn.merge", ctx.scale, ctx.bound)
    with b.owned(f"{hint}.attn.proj"):
        return b.linear(ctx, attn.proj, f"{hint}.attn.proj")


def _attention_values(b: _Builder, probs: Value, v: Value, attn: nn.Module, s_v: torch.Tensor, heads: int, hint: str,
                      tokens: int) -> Value:
    point = attn.av.a_quant
    q = point.quantizer
    # sums over the model's tokens (the position embedding fixes their number)
    if isinstance(q, BitLog2Quantizer):
        frac = -math.log2(float(probs.scale))
        if frac != round(frac):
            raise ConfigError(f"{hint}: BitLog2 needs a softmax output scale of 2^-f, got {float(probs.scale)}")
        divisor = q.divisor.double().reshape(-1).expand(heads).reshape(1, heads, 1, 1)
        int_max = q.scheme.int_max
        return b.emit("bitlog2_av", [probs, v], hint, s_v / divisor, tokens * int_max * v.bound,
                      attrs={"int_max": int_max, "half": q.scheme.half, "frac_bits": int(frac)})
    if isinstance(q, UniformQuantizer) and q.scale.numel() == 1:
        p = b.requant_to_point(probs, point, None, f"{hint}.probs")
        return b.emit("matmul", [p, v], hint, p.scale * s_v, tokens * p.bound * v.bound)
    if q.integer_form:  # log√2, AdaLog, twin-uniform, per-head uniform: thresholds and a table of levels
        thresholds, levels, shift, scale = level_table(q, heads, float(probs.scale), probs.bound, hint)
        bound = tokens * int(levels.abs().max()) * v.bound
        return b.emit("table_av", [probs, v], hint, scale.reshape(1, heads, 1, 1) * 2.0**-shift * s_v, bound,
                      consts={"thresholds": thresholds, "levels": levels})
    raise ConfigError(
        f"{hint}: the attention map quantizer {type(q).__name__} has no integer form "
        "(supported: BitLog2, uniform, log√2, AdaLog, twin-uniform)"
    )


def level_table(q: Quantizer, heads: int, p_scale: float, y_max: int, hint: str) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """The attention quantizer ``q`` as integer comparisons and a table, exactly as the simulation applies
    it to the softmax kernel's output ``y · p_scale`` (y = 0..y_max):

    thresholds ``[H, K]`` (the smallest y of each new level, ascending; padded with y_max + 1), levels
    ``[H, K + 1]`` (int64: each level's mantissa shifted onto one common ``shift``), and the per-head
    scale Δ_h, so that level = Δ_h · L · 2^-shift. The levels must not decrease with y (every format
    here is monotone); a table whose aligned levels would not fit 2^62 raises :class:`RangeError`."""
    y = torch.arange(y_max + 1, dtype=torch.float64)
    x = (y * p_scale).to(torch.float32).reshape(1, 1, 1, -1).expand(1, heads, 1, -1)  # what the point receives
    view = q.to_integer(x)
    mantissa = view.mantissa.reshape(heads, -1)
    shifts = torch.zeros_like(mantissa) if view.shift is None else view.shift.reshape(heads, -1)
    shift = int(shifts.max())
    if int(mantissa.abs().max()).bit_length() + shift - int(shifts.min()) >= 62:
        raise RangeError(f"{hint}: the attention quantizer's levels span more than 62 bits; no exact integer table")
    aligned = mantissa << (shift - shifts)
    if bool((aligned[:, 1:] < aligned[:, :-1]).any()):
        raise ConfigError(f"{hint}: the attention quantizer's levels do not grow with the probability; no table form")
    rows = [torch.cat([torch.zeros(1, dtype=torch.int64), (aligned[h, 1:] != aligned[h, :-1]).nonzero().reshape(-1) + 1])
            for h in range(heads)]
    width = max(len(r) for r in rows)
    thresholds = torch.full((heads, width - 1), y_max + 1, dtype=torch.int64)
    levels = torch.empty((heads, width), dtype=torch.int64)
    for h, starts in enumerate(rows):
        thresholds[h, : len(starts) - 1] = starts[1:]
        levels[h, : len(starts)] = aligned[h, starts]
        levels[h, len(starts):] = aligned[h, starts[-1]]
    scale = view.scale.double().reshape(-1).expand(heads).clone()
    return thresholds, levels, shift, scale


def shifted_gelu_table(slot: nn.Module, shift: float, point: QuantPoint, hint: str) -> tuple[torch.Tensor, int, torch.Tensor]:
    """A shifted GELU and the quantizer after it (AdaLog's post-GELU: ``x̂ = Q(GELU(x) + c)``) as one table
    over the GELU's input codes ``low..high`` (at most 2^b entries), built from the integer kernel and the
    quantizer exactly as the simulation computes them (kernel in float64, ``fl32(y·S_y) + c``, ``Q``):
    ``(table, low, scale)`` with int64 entries ``L`` (each level's mantissa on one common shift) and
    ``x̂ = scale · L``. A per-channel quantizer, or levels spanning 62 bits, has no such table."""
    gq = slot.input_quant.quantizer
    q = point.quantizer
    if q is None or q.scale.numel() != 1:
        raise ConfigError(f"{hint}: the post-GELU quantizer needs one scale per tensor for an integer table")
    low, high = int(gq.code_min), int(gq.code_max)
    y, y_scale = slot.kernel(torch.arange(low, high + 1, dtype=torch.float64), gq.scale.double(), FLOAT)
    v = torch.clamp((y * y_scale).to(torch.float32) + shift, min=0.0)  # QuantGELU's output, ShiftedActivation's max(. + c, 0)
    view = q.to_integer(v)
    shifts = torch.zeros_like(view.mantissa) if view.shift is None else view.shift
    top = int(shifts.max())
    if int(view.mantissa.abs().max()).bit_length() + top - int(shifts.min()) >= 62:
        raise RangeError(f"{hint}: the post-GELU quantizer's levels span more than 62 bits; no exact integer table")
    table = view.mantissa << (top - shifts)
    return table, low, (view.scale.double().reshape(()) * 2.0**-top)


def _vit_block(b: _Builder, x: Value, block: nn.Module, hint: str, tokens: int) -> Value:
    return _mlp_branch(b, _attention_branch(b, x, block, hint, tokens), block, hint)


def _mlp_branch(b: _Builder, x: Value, block: nn.Module, hint: str) -> Value:
    mlp = block.mlp
    with b.owned(f"{hint}.norm2"):
        h = _layernorm(b, x, block.norm2, f"{hint}.norm2")
    with b.owned(f"{hint}.mlp.fc1"):
        h = b.requant_to_point(h, mlp.fc1.input_quant, None, f"{hint}.mlp.fc1.in")
        h = b.linear(h, mlp.fc1, f"{hint}.mlp.fc1")
    if isinstance(mlp.act, ShiftedActivation):  # AdaLog post-GELU: GELU + c and fc2's codes in one table
        slot, _ = b.kernel(mlp.act.act, f"{hint}.mlp.act.act")
        with b.owned(f"{hint}.mlp.act"):
            g = b.requant_to_point(h, slot.input_quant, None, f"{hint}.mlp.act.in")
            table, low, scale = shifted_gelu_table(slot, mlp.act.shift, mlp.fc2.input_quant, f"{hint}.mlp.act")
            g = b.emit("lookup", [g], f"{hint}.mlp.act", scale, int(table.abs().max()), attrs={"low": low},
                       consts={"table": table})
        with b.owned(f"{hint}.mlp.fc2"):
            y = b.linear(g, mlp.fc2, f"{hint}.mlp.fc2", shifted_input=True)
        return _residual_add(b, x, y, block.add_mlp, hint + ".mlp", f"{hint}.add_mlp")
    slot, attrs = b.kernel(mlp.act, f"{hint}.mlp.act")
    with b.owned(f"{hint}.mlp.act"):
        g = b.requant_to_point(h, slot.input_quant, None, f"{hint}.mlp.act.in")
        gq = slot.input_quant.quantizer
        domain = torch.arange(int(gq.code_min), int(gq.code_max) + 1, dtype=torch.float64)
        table, g_scale = slot.kernel(domain, gq.scale.double(), FLOAT)  # elementwise: its exact output range
        g = b.emit("gelu", [g], f"{hint}.mlp.act", g_scale, int(table.abs().max()), attrs=attrs,
                   consts={"scale": gq.scale.double().reshape(())})
    with b.owned(f"{hint}.mlp.fc2"):
        g = b.requant_to_point(g, mlp.fc2.input_quant, None, f"{hint}.mlp.fc2.in")
        y = b.linear(g, mlp.fc2, f"{hint}.mlp.fc2")
    return _residual_add(b, x, y, block.add_mlp, hint + ".mlp", f"{hint}.add_mlp")


def compensated(b: _Builder, x: Value, block: nn.Module, hint: str, body: Callable[[Value], Value]) -> Value:
    """``body(x)`` (the block's branches), plus the block's compensation of ``x`` (QwT,
    :mod:`vitquant.compensation`) when it has one: ``x`` requantized onto the compensation Linear's
    input codes, the Linear, and one more residual add."""
    out = body(x)
    comp = getattr(block, "compensation", None)
    if comp is None:
        return out
    with b.owned(f"{hint}.compensation"):
        c = b.requant_to_point(x, comp.input_quant, None, f"{hint}.compensation.in")
        c = b.linear(c, comp, f"{hint}.compensation")
    return _residual_add(b, out, c, block.add_comp, hint + ".comp", f"{hint}.add_comp")


def _residual_add(b: _Builder, x: Value, y: Value, add: nn.Module, hint: str, module: str) -> Value:
    """``Q_r(x) + Q_r(y)``: both operands onto the add's fixed-point codes, added (computed by ``module``)."""
    with b.owned(module):
        xr = b.residual(x, add, f"{hint}.skip")
        yr = b.residual(y, add, f"{hint}.out")
        return b.emit("add", [xr, yr], f"{hint}.add", xr.scale, xr.bound + yr.bound)
