"""Quantizable attention: with quantization off, a prepared model computes exactly what timm computes."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.attention import Attention
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

from vitquant import qconfig
from vitquant.calibration import prepare
from vitquant.nn import Mode, QuantPoint, QuantViTAttention, QuantWindowAttention, quant_points, set_mode
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
        for point_attr, role in (
            ("q_quant", qconfig.MATMUL_INPUT),
            ("k_quant", qconfig.MATMUL_INPUT),
            ("v_quant", qconfig.MATMUL_INPUT),
            ("attn_quant", qconfig.POST_SOFTMAX),
        ):
            point = getattr(attn, point_attr)
            assert isinstance(point, QuantPoint)
            assert point.role == role
            assert point.point_name == f"{name}.{point_attr}"
            assert point.spec is not None
    # the four attention points are distinct modules (no shared state between q, k, v, attn)
    ids = [id(getattr(a, p)) for _, a in attns for p in ("q_quant", "k_quant", "v_quant", "attn_quant")]
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
    # drive the prepared copy through calibration and quantization: still no effect on the original
    for m in prepared.modules():
        if isinstance(m, WeightQuantMixin):
            m.quantize_weight()
    set_mode(prepared, Mode.CALIBRATE)
    with torch.no_grad():
        prepared(x)

    assert [(n, type(m)) for n, m in model.named_modules()] == types_before
    assert not any(isinstance(m, QuantPoint) for m in model.modules())
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key
    with torch.no_grad():
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_calibrate_mode_gives_every_point_a_quantizer(tiny, kind):
    model = tiny.model(kind)
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    points = list(quant_points(prepared))
    assert points and all(p.quantizer is None for _, p in points)
    for m in prepared.modules():
        if isinstance(m, WeightQuantMixin):
            m.quantize_weight()
    set_mode(prepared, Mode.CALIBRATE)
    with torch.no_grad():
        out = prepared(tiny.images(4, kind, seed=4))
    assert torch.isfinite(out).all()
    missing = [name for name, p in points if p.quantizer is None or p.observed_min is None]
    assert missing == []
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


def test_from_float_shares_parameters_with_the_original():
    attn, _ = _vit_attention_pair()
    quant = QuantViTAttention.from_float(attn)
    assert quant.qkv.weight is attn.qkv.weight
    assert quant.proj.bias is attn.proj.bias
    # adding points to the new module does not add them to the old one
    assert not any(isinstance(m, QuantPoint) for m in attn.modules())
