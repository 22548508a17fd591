"""Residual-stream rotation: the Hadamard constructions, the rotation's properties, the same function
on ViT variants, calibration and the integer program on a rotated model, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

from conftest import VIT_KWARGS
from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError
from vitquant.integer import IntegerModel
from vitquant.integer.convert import plan_vit
from vitquant.integer.exact import exact_integer_logits, exact_simulation
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.rotation import hadamard, rotate, rotation

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 48, 192, 384, 768, 1024])
def test_hadamard_orders(n):
    h = hadamard(n)
    assert h is not None and set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


def test_no_known_construction_falls_back_to_orthogonal():
    assert hadamard(100) is None
    q, used = rotation(100, "hadamard")
    assert used == "orthogonal"
    with pytest.raises(ConfigError, match="order of at least 1"):
        hadamard(0)


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
def test_rotation_is_orthogonal_keeps_the_ones_direction_and_spreads(kind):
    q, used = rotation(192, kind, seed=3)
    eye = torch.eye(192, dtype=torch.float64)
    assert used == kind and torch.allclose(q @ q.T, eye, atol=1e-12)
    assert torch.allclose(q @ torch.ones(192, dtype=torch.float64), torch.ones(192, dtype=torch.float64), atol=1e-12)
    assert q.abs().max() < 0.5  # an outlier channel is spread, not kept
    assert not torch.equal(q, rotation(192, kind, seed=4)[0])  # seeded
    assert torch.equal(q, rotation(192, kind, seed=3)[0])


def _vit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**VIT_KWARGS, **kwargs}).eval()
    with torch.no_grad():  # non-trivial norms, LayerScale and biases
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    return model


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "layer_scale", "avg_pool"])
def test_rotation_keeps_the_models_function(tiny, variant):
    if variant in ("vit", "deit_distilled"):
        model = tiny.model(variant)
    elif variant == "layer_scale":
        model = _vit(init_values=0.3)
    else:
        model = _vit(global_pool="avg", fc_norm=True, class_token=False)
    x = tiny.images(4, "vit", seed=1)
    rotated, used = rotate(model, "hadamard", seed=0)
    with torch.no_grad():
        before, after = model(x), rotated(x)
    assert used == "hadamard" and (after - before).abs().max() < 1e-4 * before.abs().max()
    if variant == "layer_scale":  # folded into the writers: nothing left that the integer path lacks
        assert all(isinstance(b.ls1, torch.nn.Identity) and isinstance(b.ls2, torch.nn.Identity) for b in rotated.blocks)
    assert not torch.equal(rotated.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)  # a copy, rotated


def test_rotated_model_calibrates_and_converts_bit_for_bit(tiny):
    model = tiny.model("vit")
    x = tiny.images(8, "vit", seed=1)
    rotated, _ = rotate(model)
    qconfig = repq_vit_qconfig(8, 8, "bitlog2-half-17", 4).with_nonlinear(NonlinearConfig.everywhere("ibert"))
    result = quantize_model(rotated, x, qconfig)
    plan = plan_vit(result.model)
    ints = IntegerModel(plan.program).run(x)
    with exact_simulation(result.model, plan):
        assert torch.equal(exact_integer_logits(result.model, x, plan).to(ints.dtype), ints)
    with torch.no_grad():
        agree = (result.model(x).argmax(-1) == model(x).argmax(-1)).float().mean()
    assert agree >= 0.75  # W8A8 of the rotated model still computes the original's function


def test_errors(tiny):
    with pytest.raises(ConfigError, match="unknown rotation 'spin'; choose one of hadamard, orthogonal"):
        rotate(tiny.model("vit"), "spin")
    with pytest.raises(ConfigError, match="supports timm VisionTransformer"):
        rotate(tiny.model("swin"))
    with pytest.raises(ConfigError, match="register tokens"):
        rotate(_vit(reg_tokens=2))
    for pool in ("max", "avgmax", "map"):  # per-channel max and attention pools do not commute with Q
        with pytest.raises(ConfigError, match="class-token or average pooling"):
            rotate(_vit(global_pool=pool, class_token=False))
    with pytest.raises(ConfigError, match="Linear classifier head"):
        rotate(_vit(num_classes=0))
    with pytest.raises(ConfigError, match="unknown rotation 'Hadamard'"):
        rotation(48, "Hadamard")
