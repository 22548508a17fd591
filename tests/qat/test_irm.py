"""Q-ViT's IRM: starts as the identity, normalizes with batch statistics while training, and folds into
qkv leaving the inference outputs unchanged (ViT and Swin, a negative γ included)."""

from __future__ import annotations

import copy

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.calibration.pipeline import prepare
from vitquant.errors import ConfigError
from vitquant.nn.attention import attentions
from vitquant.nn.quant_point import Mode, set_mode
from vitquant.qat import InformationRectifier, fold_rectifiers, install_rectifiers
from vitquant.qat.irm import measure_qk
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer

pytestmark = pytest.mark.usefixtures("single_thread")


def _calibrated(tiny, kind: str = "vit"):
    torch.manual_seed(0)
    model, x = tiny.model(kind), tiny.images(6, kind, seed=1)
    return model, quantize_model(model, x, repq_vit_qconfig(4, 4, "bitlog2-half-17")), x


def test_training_mode_normalizes_with_the_batch_and_updates_the_running_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 7, 5, generator=g) * 2 + 1
    irm = InformationRectifier(torch.zeros(3, 5), torch.ones(3, 5))
    with torch.no_grad():
        irm.weight.copy_(torch.rand(3, 1, 5, generator=g) + 0.5)
        irm.bias.copy_(torch.randn(3, 1, 5, generator=g))
    irm.train()
    y = irm(x)
    mean = x.double().mean(dim=(0, 2), keepdim=True)
    var = x.double().var(dim=(0, 2), unbiased=False, keepdim=True)
    expected = irm.weight.double() * (x.double() - mean) / torch.sqrt(var + irm.eps) + irm.bias.double()
    assert torch.allclose(y.double(), expected, atol=1e-6)
    assert torch.allclose(irm.running_mean.double(), 0.1 * mean[0], atol=1e-6)  # momentum 0.1 from 0
    assert torch.allclose(irm.running_var.double(), 0.9 + 0.1 * var[0], atol=1e-6)
    irm.eval()  # evaluation: the running statistics, an affine map
    a, b = irm.affine()
    assert torch.allclose(irm(x).double(), x.double() * a[:, None, :] + b[:, None, :], atol=1e-5)


def test_installed_irm_starts_as_the_identity_with_the_measured_statistics(tiny):
    _, result, x = _calibrated(tiny)
    model = copy.deepcopy(result.model)
    stats = measure_qk(model, [x])
    seen = []
    handle = model.blocks[1].attn.qkv.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    q = seen[0].reshape(6, 17, 3, 3, 16)[:, :, 0].permute(2, 0, 1, 3).reshape(3, -1, 16).double()  # [heads, rows, dim]
    mean_q, var_q = stats["blocks.1.attn"][:2]
    assert torch.allclose(mean_q, q.mean(1), atol=1e-6) and torch.allclose(var_q, q.var(1, unbiased=False), atol=1e-5)
    installed = install_rectifiers(model, [x])
    assert len(installed) == 4 and model.blocks[0].attn.q_rectify is installed[0]
    assert not any(irm.training for irm in installed)  # in the model's (evaluation) mode
    other = tiny.images(5, "vit", seed=7)  # not the images the statistics came from
    with torch.no_grad():
        assert torch.equal(model(other), result.model(other))


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_folding_leaves_the_inference_outputs_unchanged(tiny, kind):
    """A trained-looking IRM (random γ, one negative; β; running statistics) in evaluation mode, then
    folded into qkv (W4A4): the q and k reaching their quantizers differ by float rounding only (one
    product a·W instead of a·(W·x)), so their codes agree but where a value sits on a rounding tie; here
    none does and the logits are equal."""
    _, result, x = _calibrated(tiny, kind)
    model = copy.deepcopy(result.model)
    rectifiers = install_rectifiers(model, [x])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for irm in rectifiers:
            irm.weight.mul_(torch.rand(irm.weight.shape, generator=g) + 0.5)
            irm.weight[0, 0, 0] *= -1  # a negative γ: the weight quantizer's zero point is mirrored
            irm.bias.add_(torch.randn(irm.bias.shape, generator=g) * 0.3)
            irm.running_mean.add_(torch.randn(irm.running_mean.shape, generator=g) * 0.1)
            irm.running_var.mul_(torch.rand(irm.running_var.shape, generator=g) + 0.5)
    model.eval()
    with torch.no_grad():
        before = model(x)
    name, attn = next(attentions(model))
    qkv_before = attn.qkv.weight_quantizer.zero_point.clone()
    assert fold_rectifiers(model) == len(rectifiers) // 2
    assert all(a.q_rectify is None and a.k_rectify is None for _, a in attentions(model))
    assert not any(isinstance(m, InformationRectifier) for m in model.modules())
    quantizer = attn.qkv.weight_quantizer
    assert isinstance(quantizer, UniformQuantizer)
    assert float(quantizer.zero_point[0]) == quantizer.qmax - float(qkv_before[0])  # the mirrored row
    assert torch.equal(attn.qkv.weight_fq, quantizer(attn.qkv.weight.detach()))
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() <= 1e-5
    assert fold_rectifiers(model) == 0  # nothing left to fold


def test_folding_a_float_model_is_exact_to_rounding(tiny):
    model = tiny.model("vit")
    x = tiny.images(4, "vit", seed=2)
    prepared = prepare(copy.deepcopy(model), repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    set_mode(prepared, Mode.FLOAT)
    for irm in install_rectifiers(prepared, [x]):
        with torch.no_grad():
            irm.weight.mul_(1.7)
            irm.bias.add_(0.2)
    prepared.eval()
    with torch.no_grad():
        before = prepared(x)
        fold_rectifiers(prepared)
        assert torch.allclose(prepared(x), before, atol=1e-5)
        assert not torch.allclose(prepared(x), model(x), atol=1e-2)  # the IRM did change the function


def test_models_that_normalize_q_and_k_themselves_are_refused():
    import timm

    from conftest import VIT_KWARGS

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, qk_norm=True, **VIT_KWARGS).eval()
    prepared = prepare(model, repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    with pytest.raises(ConfigError, match=r"normalizes q and k itself \(q_norm\); train without the IRM \(--no-irm\)"):
        install_rectifiers(prepared, [torch.randn(2, 3, 32, 32)])


def test_a_collapsed_irm_is_not_folded(tiny):
    from vitquant.errors import NumericalError

    _, result, x = _calibrated(tiny)
    model = copy.deepcopy(result.model)
    irm = install_rectifiers(model, [x])[0]
    with torch.no_grad():
        irm.weight[0, 0, 3] = 0.0
    with pytest.raises(NumericalError, match=r"blocks.0.attn: the IRM cannot be folded \(γ = 0"):
        fold_rectifiers(model)
