"""Quantization-aware training of the integer-only model: the integer non-linear kernels stay in the
forward pass while training (``kernels="ste"``), gradients pass straight through them (softmax on the
integer q@kᵀ product included) and through the integer residual adds, the trained model converts."""

from __future__ import annotations

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError
from vitquant.nn.attention import attentions
from vitquant.nn.nonlinear import QuantNonLinear
from vitquant.nn.residual import QuantResidualAdd
from vitquant.nonlinear import NonlinearConfig
from vitquant.qat import QATTrainer, TensorImages, TrainConfig, kd_loss
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers.trainable import LSQActivation

from qat_cases import calibrated_case, make_trainer as _trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def _qconfig(family: str):
    return repq_vit_qconfig(4, 4, "bitlog2-half-17").with_nonlinear(NonlinearConfig.everywhere(family, 6))


@pytest.fixture(scope="module", params=["ivit", "ibert"])
def case(request):
    """The tiny ViT calibrated at W4A4 with every softmax, GELU, LayerNorm and residual add integer
    (``request.param``'s kernels), and 24 training images of 10 classes."""
    return calibrated_case(_qconfig(request.param))


def _kernels(model: torch.nn.Module) -> list[str | None]:
    return [m.active for m in model.modules() if isinstance(m, QuantNonLinear)]


def test_the_model_is_integer_where_asked(case):
    _, result, _, _ = case
    active = _kernels(result.model)
    assert active and all(a is not None for a in active)  # 2 blocks: 2 softmax, 2 GELU, 5 LayerNorm
    assert all(m.residual_quant is not None for m in result.model.modules() if isinstance(m, QuantResidualAdd))


def test_kernels_stay_in_the_loop_and_training_starts_at_the_evaluated_model(case):
    """With gradients on, the student's forward (kernels, LSQ stand-ins, IRM) equals the calibrated
    model's evaluation forward bit for bit; with the kernels as float ops while training it does not."""
    _, result, calib, train = case
    ste = _trainer(case)
    assert ste.config.kernels == "ste" and _kernels(ste.student) == _kernels(result.model)
    with torch.no_grad():
        expected = result.model(train.images)
    with torch.enable_grad():
        out = ste.student(train.images)
    assert out.requires_grad and torch.equal(out.detach(), expected)
    floats = _trainer(case, kernels="float")
    assert all(a is None for a in _kernels(floats.student))
    with torch.enable_grad():
        assert not torch.equal(floats.student(train.images).detach(), expected)
    assert _kernels(floats.finish().model) == _kernels(result.model)  # active again after training


def test_gradients_are_finite_and_reach_weights_steps_q_and_k(case):
    trainer = _trainer(case)
    images = case[3].images[:4]
    with torch.no_grad():
        target = trainer.teacher(images)
    with torch.enable_grad():
        kd_loss(trainer.student(images), target).backward()
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    for r in trainer.swap.roundings:  # every latent weight and its step
        assert r.weight.grad.abs().sum() > 0 and r.scale.grad.abs().sum() > 0
    for _, attn in attentions(trainer.student):  # through the integer softmax's straight-through gradient
        for point in (attn.qk.a_quant, attn.qk.b_quant):
            assert isinstance(point.quantizer, LSQActivation) and point.quantizer.scale.grad.abs().sum() > 0
        assert attn.q_rectify.weight.grad.abs().sum() > 0 and attn.k_rectify.weight.grad.abs().sum() > 0
    # through the LayerNorm kernels to their affine parameters, and through the integer residual stream
    assert trainer.student.blocks[0].norm1.weight.grad.abs().sum() > 0
    assert trainer.student.patch_embed.proj.weight_rounding.weight.grad.abs().sum() > 0
    assert trainer.student.cls_token.grad.abs().sum() > 0


def test_a_few_steps_lower_the_loss_and_the_trained_model_converts(case):
    """16 full-batch steps lower the distillation loss of the integer-kernel model on its training images;
    during training the student computed what the hardened model computes (IRM off: hardening changes
    no value); the result is an integer-only program that runs."""
    from vitquant.integer.convert import convert_vit
    from vitquant.integer.execute import IntegerModel

    model, result, _, train = case
    trainer = _trainer(case, steps=16, batch_size=24, lr=3e-4, quant_lr=3e-4, label_weight=0.0, dgd_weight=0.0,
                       irm=False, flip=False)
    trainer.run()
    with torch.enable_grad():
        during = trainer.student(train.images).detach()
    done = trainer.finish()
    with torch.no_grad():
        after, fp = done.model(train.images), model(train.images)
        assert torch.equal(during, after)
        assert kd_loss(after, fp) < 0.7 * kd_loss(result.model(train.images), fp)
    assert trainer.history[0]["kd"] == pytest.approx(float(kd_loss(result.model(train.images), fp)), rel=1e-5)
    assert _kernels(done.model) == _kernels(result.model)
    program = convert_vit(done.model)
    out = IntegerModel(program)(train.images)
    assert torch.isfinite(out).all() and (out.argmax(-1) == after.argmax(-1)).float().mean() >= 0.75


def test_bad_kernel_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="--train-kernels must be one of float, ste, got 'int'"):
        TrainConfig(kernels="int")


@pytest.mark.parametrize("kind", ["swin", "deit_distilled"])
def test_swin_and_deit_distilled_train_with_kernels(tiny, kind):
    """Swin's integer softmax takes the relative bias and the shift mask on the product's grid; its
    straight-through logits take them exactly."""
    torch.manual_seed(0)
    model, calib = tiny.model(kind), tiny.images(4, kind, seed=1)
    result = quantize_model(model, calib, _qconfig("ivit"))
    train = TensorImages(tiny.images(8, kind, seed=2), torch.arange(8) % 10)
    trainer = QATTrainer(model, result, train, TrainConfig(steps=2, batch_size=4, lr=1e-3, quant_lr=1e-3), calib)
    with torch.no_grad():
        expected = result.model(train.images)
    with torch.enable_grad():
        assert torch.equal(trainer.student(train.images).detach(), expected)
    trainer.run()
    assert all(torch.isfinite(torch.tensor(h["loss"])) and h["dgd"] > 0 for h in trainer.history)
    done = trainer.finish()
    with torch.no_grad():
        assert torch.isfinite(done.model(calib)).all()
