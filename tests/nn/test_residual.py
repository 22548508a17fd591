"""Residual adds as modules: float adds leave the model's function bit for bit as timm's; integer adds
put both operands on one fixed-point grid fitted on both, in ViT and Swin."""

from __future__ import annotations

import copy

import pytest
import torch

from vitquant.calibration import prepare, quantize_model
from vitquant.nn import Mode, quant_points
from vitquant.nn.blocks import QuantSwinBlock, QuantViTBlock
from vitquant.nn.residual import QuantResidualAdd
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import FixedPointQuantizer, make_spec

INTEGER_ADDS = NonlinearConfig(ops={"residual": "integer"})


def test_float_add_is_plain_addition():
    add = QuantResidualAdd()
    x, y = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert torch.equal(add(x, y), x + y)
    assert add.input_points() == []


def test_integer_add_quantizes_both_operands_on_one_grid():
    add = QuantResidualAdd()
    add.set_spec(make_spec("fixed_point", bits=12))
    point = add.residual_quant
    point.set_quantizer(FixedPointQuantizer(12, torch.tensor(0.01)))
    point.mode = Mode.QUANTIZE
    x, y = torch.randn(3, 7) * 5, torch.randn(3, 7)
    out = add(x, y)
    qx = torch.clamp(torch.round(x / 0.01), -2047, 2047)
    qy = torch.clamp(torch.round(y / 0.01), -2047, 2047)
    torch.testing.assert_close(out, (qx + qy) * 0.01, rtol=0, atol=1e-6)
    assert add.point_operands() == [(0, 1)]


@pytest.mark.parametrize(("kind", "block_cls"), [("vit", QuantViTBlock), ("swin", QuantSwinBlock)])
def test_blocks_with_float_adds_compute_timms_forward(tiny, kind, block_cls):
    model = tiny.model(kind)
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4))
    blocks = [m for m in prepared.modules() if isinstance(m, block_cls)]
    assert blocks and all(m.add_attn.residual_quant is None for m in blocks)
    timm_forward = block_cls.__mro__[2].forward  # Block / SwinTransformerBlock
    shape = (2, 7, 7, 48) if kind == "swin" else (2, 17, 48)
    block = blocks[-1] if kind == "swin" else blocks[0]  # Swin: a 7x7 stage
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(block(x), timm_forward(block, x))  # the same function, bit for bit


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_integer_adds_are_fitted_on_both_operands(tiny, kind):
    model = tiny.model(kind)
    x = tiny.images(4, kind)
    qconfig = repq_vit_qconfig(8, 8, attn_bits=4).with_nonlinear(INTEGER_ADDS)
    seen: dict[str, float] = {}

    def record(name):
        return lambda module, args: seen.__setitem__(name, max(seen.get(name, 0.0), *(float(a.abs().max()) for a in args)))

    result = quantize_model(model, x, qconfig)
    adds = {n: m for n, m in result.model.named_modules() if isinstance(m, QuantResidualAdd)}
    assert adds and all(m.residual_quant is not None for m in adds.values())
    hooks = [m.register_forward_pre_hook(record(n)) for n, m in adds.items()]
    with torch.no_grad():
        logits = result.model(x)
    for h in hooks:
        h.remove()
    assert torch.isfinite(logits).all()
    for name, add in adds.items():
        q = add.residual_quant.quantizer
        assert isinstance(q, FixedPointQuantizer) and q.bits == 24
        # S_r = 2·max(|x|, |y|)/T on the calibration images: the largest operand sits near T/2 codes
        # (the fit saw the stream with the later points still float: close, not equal)
        assert float(q.scale) * q.top == pytest.approx(2.0 * seen[name], rel=0.02)
    reports = {p.name: p for p in result.points if p.role == "residual"}
    assert set(reports) == {f"{n}.residual_quant" for n in adds}
    assert all(p.levels_used is None and p.max_levels == 2**24 - 1 for p in reports.values())
    names = {n for n, p in quant_points(result.model) if p.role == "residual"}
    assert names == set(reports)
