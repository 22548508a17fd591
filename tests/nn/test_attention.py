"""Quantizable attention: with quantization off, a prepared model computes exactly what timm computes."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.attention import Attention
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

from vitquant import qconfig
from vitquant.calibration import prepare, quantize_model
from vitquant.nn import Mode, QuantMatMul, QuantPoint, QuantViTAttention, QuantWindowAttention, quant_points
from vitquant.nn.linear import WeightQuantMixin
from vitquant.qconfig import repq_vit_qconfig

KINDS = ("vit", "deit_distilled", "swin")
QUANT_ATTENTION = {"vit": QuantViTAttention, "deit_distilled": QuantViTAttention, "swin": QuantWindowAttention}
FUSED_ATOL = 1e-5  # fused SDPA vs explicit softmax(q k^T) v: float32 rounding only


def _timm_attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) in (Attention, WindowAttention)]


def _set_fused(model: torch.nn.Module, fused: bool) -> None:
    attns = _timm_attentions(model)
    assert attns, "model has no timm attention modules"
    for attn in attns:
        attn.fused_attn = fused


def _shifted_blocks(model: torch.nn.Module) -> list[SwinTransformerBlock]:
    return [
        b
        for b in model.modules()
        if isinstance(b, SwinTransformerBlock) and max(b.shift_size) > 0 and b.attn_mask is not None
    ]


def _prepared_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    # FLOAT is the default mode of every point and layer after prepare
    modes = {m.mode for m in prepared.modules() if isinstance(m, (QuantPoint, WeightQuantMixin))}
    assert modes == {Mode.FLOAT}
    with torch.no_grad():
        return prepared(x)


def test_tiny_swin_has_a_shifted_window_block(tiny):
    """Precondition of the Swin tests below: the shift mask path runs, and it changes the output."""
    model = tiny.model("swin")
    shifted = _shifted_blocks(model)
    assert len(shifted) >= 1
    x = tiny.images(2, "swin")
    with torch.no_grad():
        ref = model(x)
        for block in shifted:
            block.attn_mask.zero_()
        unmasked = model(x)
    # the mask moves the logits by far more than the tolerances used below (measured ~1e-2)
    assert (ref - unmasked).abs().max() > 100 * FUSED_ATOL, "the shift mask must matter for these tests to bite"


@pytest.mark.parametrize("kind", KINDS)
def test_float_mode_equals_timm_exactly_without_fused_attention(tiny, kind):
    model = tiny.model(kind)
    _set_fused(model, False)
    x = tiny.images(3, kind, seed=1)
    with torch.no_grad():
        ref = model(x)
    out = _prepared_logits(model, x)
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max().item()}"


@pytest.mark.parametrize("fused", ["default", True])
@pytest.mark.parametrize("kind", KINDS)
def test_float_mode_matches_timm_fused_attention(tiny, kind, fused):
    """timm's default (fused SDPA for ViT/DeiT, experimental so off for Swin) and fused forced on."""
    model = tiny.model(kind)
    if fused is True:
        _set_fused(model, True)
    x = tiny.images(3, kind, seed=2)
    with torch.no_grad():
        ref = model(x)
    out = _prepared_logits(model, x)
    torch.testing.assert_close(out, ref, atol=FUSED_ATOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_prepared_attention_modules_and_points(tiny, kind):
    model = tiny.model(kind)
    n_attn = len(_timm_attentions(model))
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))

    attns = [(n, m) for n, m in prepared.named_modules() if isinstance(m, (QuantViTAttention, QuantWindowAttention))]
    assert len(attns) == n_attn
    assert _timm_attentions(prepared) == []  # no plain timm attention left
    for name, attn in attns:
        assert type(attn) is QUANT_ATTENTION[kind]
        assert isinstance(attn.qk, QuantMatMul) and isinstance(attn.av, QuantMatMul)
        for point_attr, role, channel_dim in (
            ("qk.a_quant", qconfig.MATMUL_INPUT, -1),  # q·scale [B, heads, N, d]: channels last
            ("qk.b_quant", qconfig.MATMUL_INPUT, -2),  # kᵀ [B, heads, d, N]: channels on -2
            ("av.a_quant", qconfig.POST_SOFTMAX, -1),
            ("av.b_quant", qconfig.MATMUL_INPUT, -2),  # v [B, heads, N, d]: the contracted axis N
        ):
            point = attn.get_submodule(point_attr)
            assert isinstance(point, QuantPoint)
            assert point.role == role
            assert point.point_name == f"{name}.{point_attr}"
            assert point.spec is not None
            assert (point.channel_dim, point.head_dim) == (channel_dim, 1)
        assert attn.qk.input_points() == [attn.qk.a_quant, attn.qk.b_quant]
        assert attn.av.input_points() == [attn.av.a_quant, attn.av.b_quant]
    # the four attention points are distinct modules (no shared state between q, k, v, attn)
    ids = [id(a.get_submodule(p)) for _, a in attns for p in ("qk.a_quant", "qk.b_quant", "av.a_quant", "av.b_quant")]
    assert len(set(ids)) == 4 * n_attn


@pytest.mark.parametrize("kind", KINDS)
def test_prepare_on_a_copy_leaves_the_original_untouched(tiny, kind):
    model = tiny.model(kind)
    types_before = [(n, type(m)) for n, m in model.named_modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny.images(2, kind, seed=3)
    with torch.no_grad():
        ref = model(x)

    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    with torch.no_grad():
        prepared(x)
    # calibration and quantization (the pipeline works on its own copy): still no effect on the original
    result = quantize_model(model, x, repq_vit_qconfig(4, 4))
    with torch.no_grad():
        result.model(x)

    assert [(n, type(m)) for n, m in model.named_modules()] == types_before
    assert not any(isinstance(m, QuantPoint) for m in model.modules())
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key
    with torch.no_grad():
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_gives_every_point_a_quantizer(tiny, kind):
    model = tiny.model(kind)
    fresh = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    assert all(p.quantizer is None for _, p in quant_points(fresh))
    x = tiny.images(4, kind, seed=4)
    prepared = quantize_model(model, x, repq_vit_qconfig(4, 4)).model
    points = list(quant_points(prepared))
    # the same points as a freshly prepared model, each fitted and quantizing
    assert [name for name, _ in points] == [name for name, _ in quant_points(fresh)]
    missing = [name for name, p in points if p.quantizer is None or p.observed_min is None]
    assert missing == []
    assert {p.mode for _, p in points} == {Mode.QUANTIZE}
    with torch.no_grad():
        out = prepared(x)
    assert torch.isfinite(out).all()
    # every Linear/Conv of the prepared model is a quantized layer with a fitted weight quantizer
    plain = [n for n, m in prepared.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
    assert plain == []
    assert all(m.weight_fq is not None for m in prepared.modules() if isinstance(m, WeightQuantMixin))


# ------------------------------------------------------------------- single modules, with masks
def _vit_attention_pair(dim=24, heads=3):
    torch.manual_seed(5)
    attn = Attention(dim, num_heads=heads, qkv_bias=True).eval()
    attn.fused_attn = False
    quant = QuantViTAttention.from_float(copy.deepcopy(attn))
    return attn, quant


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_vit_attention_masks_match_timm(mask_kind):
    attn, quant = _vit_attention_pair()
    x = torch.randn(2, 7, 24)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        mask |= torch.eye(7, dtype=torch.bool)  # every query attends to something
    elif mask_kind == "float":
        mask = torch.randn(7, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(quant(x, attn_mask=mask), attn(x, attn_mask=mask))


def test_vit_attention_rejects_causal():
    _, quant = _vit_attention_pair()
    with pytest.raises(NotImplementedError):
        quant(torch.randn(1, 4, 24), is_causal=True)


def test_vit_attention_points_see_scaled_q_k_transposed_softmax_and_v():
    """Which tensor reaches which point: qk gets (q·scale, kᵀ), av gets (softmax(q·scale @ kᵀ), v)."""
    attn, quant = _vit_attention_pair()
    x = torch.randn(2, 7, 24)
    seen = {}
    for name in ("qk.a_quant", "qk.b_quant", "av.a_quant", "av.b_quant"):
        quant.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
    with torch.no_grad():
        quant(x)
        q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, d]
    assert torch.equal(seen["qk.a_quant"], q * attn.scale)
    assert torch.equal(seen["qk.b_quant"], k.transpose(-2, -1))
    assert torch.equal(seen["av.a_quant"], (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1))
    assert torch.equal(seen["av.b_quant"], v)


def test_from_float_shares_parameters_with_the_original():
    attn, _ = _vit_attention_pair()
    quant = QuantViTAttention.from_float(attn)
    assert quant.qkv.weight is attn.qkv.weight
    assert quant.proj.bias is attn.proj.bias
    # adding points to the new module does not add them to the old one
    assert not any(isinstance(m, QuantPoint) for m in attn.modules())


# ------------------------------------------------------------------- integer softmax input
def _fit(point: QuantPoint, x: torch.Tensor, granularity: str) -> None:
    from vitquant.quantizers import UniformSpec

    point.spec = UniformSpec(bits=8, granularity=granularity)
    point.set_quantizer(point.spec.fit(x, axis=point.axis(granularity)))
    point.mode = Mode.QUANTIZE


def _with_integer_softmax(quant, family="ivit"):
    from vitquant.kernels import make_kernel

    quant.softmax.set_kernels({family: make_kernel(family, "softmax")}, {family: None})
    quant.softmax.layer_name = "attn.softmax"
    return quant


@pytest.mark.parametrize("granularity", ["tensor", "head"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_integer_softmax_gets_the_exact_q_k_product_with_the_mask_on_its_grid(granularity, mask_kind):
    from vitquant.kernels import INT
    from vitquant.nn.int_tensor import IntTensor

    attn, quant = _vit_attention_pair()
    x = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(3))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        mask |= torch.eye(7, dtype=torch.bool)
    elif mask_kind == "float":
        mask = torch.randn(7, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * attn.scale
        _fit(quant.qk.a_quant, q, granularity)
        _fit(quant.qk.b_quant, k.transpose(-2, -1), granularity)
        _with_integer_softmax(quant)
        seen = {}
        quant.softmax.register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0]))
        quant.av.register_forward_pre_hook(lambda mod, args: seen.__setitem__("attn", args[0]))
        quant(x, attn_mask=mask)
    got = seen["in"]
    assert isinstance(got, IntTensor)
    # the product of the integer codes, exactly, with scale S_q·S_k (per head or per tensor)
    qa, kb = quant.qk.a_quant.quantizer, quant.qk.b_quant.quantizer
    q_int = torch.round(qa(q).double() / qa.scale.double())
    k_int = torch.round(kb(k.transpose(-2, -1)).double() / kb.scale.double())
    bias = torch.zeros(7, 7, dtype=torch.float64)
    if mask_kind == "bool":
        bias = torch.zeros(7, 7, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    elif mask_kind == "float":
        bias = mask.double()
    scale = qa.scale.double() * kb.scale.double()
    expected = q_int @ k_int + torch.round(bias / scale).clamp(-(2.0**38), 2.0**38)
    assert torch.equal(got.scale, scale) and torch.equal(got.ints, expected)
    assert got.scale.numel() == (3 if granularity == "head" else 1)
    # the kernel ran on those integers head by head (the INT implementation, bit for bit)
    kernel = quant.softmax.slots["ivit"].kernel
    heads = []
    for h in range(3):
        y, ys = kernel(expected[:, h].to(torch.int64), scale.reshape(-1)[h if scale.numel() > 1 else 0], INT)
        heads.append(y.double() * ys)
    assert torch.equal(seen["attn"], torch.stack(heads, 1).float())
    if mask_kind == "bool":  # masked logits get no weight
        assert (seen["attn"][:, :, ~mask] == 0).all()


def test_integer_softmax_refuses_per_channel_q():
    from vitquant.errors import ConfigError

    attn, quant = _vit_attention_pair()
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        q, k, _ = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4).unbind(0)
        _fit(quant.qk.a_quant, q * attn.scale, "channel")
        _fit(quant.qk.b_quant, k.transpose(-2, -1), "tensor")
        _with_integer_softmax(quant)
        with pytest.raises(ConfigError, match="one step per tensor or per head"):
            quant(x)
        quant.softmax.activate(None)  # the float softmax does not need the product
        quant(x)


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_integer_softmax_in_a_calibrated_model(tiny, kind):
    """Calibration with integer softmax kernels: no softmax input points, the kernels see IntTensor
    (Swin: relative position bias and shift mask on the product grid), finite outputs."""
    from vitquant.nn.int_tensor import IntTensor
    from vitquant.nn.nonlinear import QuantSoftmax
    from vitquant.nonlinear import NonlinearConfig

    model = tiny.model(kind)
    x = tiny.images(4, kind, seed=4)
    cfg = repq_vit_qconfig(8, 8, attn_bits=4).with_nonlinear(NonlinearConfig(ops={"softmax": "ivit"}))
    prepared = quantize_model(model, x, cfg).model
    softmaxes = [m for m in prepared.modules() if isinstance(m, QuantSoftmax)]
    assert softmaxes and all(m.takes_integers and m.input_points() == [] for m in softmaxes)
    kinds = []
    for m in softmaxes:
        m.register_forward_pre_hook(lambda mod, args: kinds.append(type(args[0])))
    with torch.no_grad():
        out = prepared(x)
        ref = model(x)
    assert kinds and set(kinds) == {IntTensor}
    assert torch.isfinite(out).all()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5


def test_products_give_the_integer_product_and_with_gradients_the_float_one():
    """QuantMatMul.products: the integer q@kᵀ (as integer_product) and, only when a gradient is wanted,
    Q(q)@Q(kᵀ) with its gradient; the trainable LSQ stand-ins give the same integers."""
    from vitquant.nn.matmul import QuantMatMul
    from vitquant.quantizers.trainable import LSQActivation
    from vitquant.quantizers.uniform import UniformQuantizer

    g = torch.Generator().manual_seed(0)
    q, kt = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 8, 5, generator=g)
    mm = QuantMatMul("matmul_input", "matmul_input")
    for point, scale in ((mm.a_quant, 0.1), (mm.b_quant, 0.07)):
        point.set_quantizer(UniformQuantizer(4, torch.tensor(scale), torch.tensor(8.0)))
        point.mode = Mode.QUANTIZE
    with torch.no_grad():
        ints, none = mm.products(q, kt)
        assert none is None and torch.equal(ints.ints, mm.integer_product(q, kt).ints)
        assert torch.allclose(ints.dequantize(), mm(q, kt), atol=1e-6)
    fitted = [mm.a_quant.quantizer, mm.b_quant.quantizer]
    mm.a_quant.quantizer, mm.b_quant.quantizer = (LSQActivation(f) for f in fitted)
    qg = q.clone().requires_grad_(True)
    trained, logits = mm.products(qg, kt)
    assert torch.equal(trained.ints, ints.ints) and logits.requires_grad
    logits.sum().backward()
    assert qg.grad.abs().sum() > 0 and mm.a_quant.quantizer.scale.grad is not None
