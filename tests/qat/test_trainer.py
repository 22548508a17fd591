"""The training loop on a tiny calibrated ViT: what trains, a resumed run equal bit for bit to one run
straight through, an ordinary calibrated model at the end (levels, states), clear errors on resuming
another run's checkpoint."""

from __future__ import annotations


import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.errors import CheckpointError, ConfigError
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import quant_points
from vitquant.qat import InformationRectifier, QATTrainer, TensorImages, TrainConfig, kd_loss
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer, quantizer_from_state
from vitquant.quantizers.trainable import FrozenActivation, LSQActivation, LSQWeight

from qat_cases import calibrated_case, make_trainer as _trainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def case():
    """The tiny ViT, calibrated at W4A4 on 6 images, and 24 training images of 10 classes."""
    return calibrated_case(repq_vit_qconfig(4, 4, "bitlog2-half-17"))


def _state(trainer: QATTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.student.state_dict().items()}


def test_the_swap_trains_latent_weights_steps_irm_and_float_parameters(case):
    trainer = _trainer(case)
    modules = list(trainer.student.modules())
    assert sum(isinstance(m, LSQWeight) for m in modules) == trainer.trained["lsq_weights"] == 10
    assert sum(isinstance(m, LSQActivation) for m in modules) == trainer.trained["lsq_steps"] == 16
    assert sum(isinstance(m, FrozenActivation) for m in modules) == trainer.trained["frozen_points"] == 2  # attention maps
    assert sum(isinstance(m, InformationRectifier) for m in modules) == trainer.trained["rectifiers"] == 4
    trainable = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(p.requires_grad == (id(p) in trainable) for p in trainer.student.parameters())
    before = _state(trainer)
    trainer.run()
    after = _state(trainer)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.endswith("weight_rounding.weight") for k in changed)  # latent weights
    assert any(k.endswith("weight_rounding.scale") for k in changed)  # weight steps
    assert any(k.endswith("input_quant.quantizer.scale") for k in changed)  # activation steps
    assert {"blocks.0.attn.q_rectify.weight", "blocks.0.attn.q_rectify.running_mean", "blocks.1.norm1.weight",
            "cls_token", "head.bias"} <= changed
    assert "blocks.0.attn.qkv.weight" not in changed  # replaced by its latent copy while training
    assert [h["step"] for h in trainer.history] == list(range(6)) and trainer.step == 6
    assert all(h["images"] == 4 and h["loss"] > 0 for h in trainer.history)


def test_training_starts_at_the_calibrated_model_bit_for_bit(case):
    """IRM (evaluation mode) and LSQ stand-ins installed: the same logits as the calibrated model."""
    _, result, calib, train = case
    trainer = _trainer(case)
    with torch.no_grad():
        assert torch.equal(trainer.student(train.images), result.model(train.images))
        assert torch.equal(trainer.student(calib), result.model(calib))


def test_a_resumed_run_ends_with_the_same_parameters_bit_for_bit(case, tmp_path):
    """6 steps straight through, or 3, a checkpoint, a new trainer resuming from it, 3 more."""
    straight = _trainer(case)
    straight.run()
    path = tmp_path / "ck.pt"
    first = _trainer(case, checkpoint=path)
    first.run(until=3)
    assert first.step == 3 and path.is_file()
    second = _trainer(case, checkpoint=path, resume=True)
    assert second.step == 3 and second.resumed_from == 3
    second.run()
    a, b = _state(straight), _state(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.history == straight.history
    for s, t in zip(straight.optimizer.state.values(), second.optimizer.state.values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    done_a, done_b = straight.finish(), second.finish()
    with torch.no_grad():
        x = case[2]
        assert torch.equal(done_a.model(x), done_b.model(x))
    assert done_b.resumed_from == 3 and done_a.resumed_from is None
    other = _trainer(case, seed=1)  # another order of the images: another result
    other.run()
    assert not torch.equal(_state(other)["cls_token"], a["cls_token"])


def test_finish_gives_an_ordinary_calibrated_model_with_its_levels(case):
    model, result, calib, _ = case
    trainer = _trainer(case)
    trainer.run()
    with torch.no_grad():
        trained = trainer.student(calib)  # stand-ins and IRM still installed
    done = trainer.finish()
    qmodel = done.model
    with torch.no_grad():  # hardening changes nothing; the IRM's fold changes float rounding only
        assert (qmodel(calib) - trained).abs().max() <= 1e-5
    assert not any(isinstance(m, (LSQWeight, LSQActivation, FrozenActivation, InformationRectifier)) for m in qmodel.modules())
    for m in qmodel.modules():
        if isinstance(m, WeightQuantMixin) and m.weight_quantizer is not None:
            assert m.weight_rounding is None and type(m.weight_quantizer) is UniformQuantizer
            assert torch.equal(m.weight_fq, m.weight_quantizer(m.weight.detach()))  # weights on their grid
    for _, point in quant_points(qmodel):
        if point.quantizer is not None:
            assert type(quantizer_from_state(point.quantizer.state())) is type(point.quantizer)
    assert [p.name for p in done.calibration.points] == [p.name for p in result.points]
    assert all(p.levels_used is not None and 0 < p.levels_used <= p.max_levels for p in done.calibration.points)
    assert done.calibration.model is qmodel and done.calibration.role_summary("post_softmax")["points"] == 2
    summary = done.to_dict()
    assert summary["steps"] == 6 and summary["steps_per_epoch"] == 6 and summary["epochs"] == 1.0
    assert summary["warmup_steps"] == 1 and len(summary["history"]) == 6 and summary["seconds"] > 0
    assert 0.0 <= summary["running_top1"] <= 100.0 and summary["first_loss"] == summary["history"][0]["loss"]
    with torch.no_grad():
        assert torch.isfinite(qmodel(calib)).all()
    assert all(not p.requires_grad for p in qmodel.parameters())
    # the calibrated model it started from is untouched
    assert not any(isinstance(m, LSQWeight) for m in result.model.modules())


def test_training_lowers_the_distillation_loss_on_other_images(case):
    from conftest import images

    model, result, _, _ = case
    held_out = images(32, 32, seed=9)
    trainer = _trainer(case, steps=24, lr=1e-4, quant_lr=1e-4, label_weight=0.0, dgd_weight=0.0)
    trainer.run()
    trained = trainer.finish().model
    with torch.no_grad():
        fp = model(held_out)
        assert kd_loss(trained(held_out), fp) < 0.9 * kd_loss(result.model(held_out), fp)


def test_resuming_another_runs_checkpoint_is_refused(case, tmp_path):
    path = tmp_path / "ck.pt"
    _trainer(case, checkpoint=path).run(until=2)
    with pytest.raises(CheckpointError, match=r"different run \(seed: 0 in the checkpoint, 1 now\)"):
        _trainer(case, checkpoint=path, resume=True, seed=1)
    with pytest.raises(CheckpointError, match=r"different run \(irm: True in the checkpoint, False now\)"):
        _trainer(case, checkpoint=path, resume=True, irm=False)
    model, _, calib, train = case
    other = quantize_model(model, calib, repq_vit_qconfig(3, 3, "bitlog2-half-17"))
    with pytest.raises(CheckpointError, match="calibrated_model: '"):
        QATTrainer(model, other, train, TrainConfig(steps=6, batch_size=4, lr=1e-3, quant_lr=1e-3, label_weight=0.5,
                                                    checkpoint=path, resume=True), calib)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        _trainer(case, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        _trainer(case, checkpoint=tmp_path / "none.pt", resume=True)


def test_too_few_training_images_for_one_step(case):
    with pytest.raises(ConfigError, match="24 training images do not fill one step of 32 images"):
        _trainer(case, batch_size=32)


def test_folder_images_mark_the_skipped_positions(tmp_path):
    from conftest import noise_folder
    from vitquant.data import list_images
    from vitquant.qat import FolderImages
    from vitquant.qat.sampling import LazyBatches, StepSampler
    from torchvision import transforms

    folder = noise_folder(tmp_path / "images", 6, bad=(2,))
    records = list_images(folder)
    data = FolderImages(records, transforms.ToTensor(), on_bad_image="skip")
    plan = LazyBatches(StepSampler(6, 3, seed=0), 0, 2)
    seen = list(data.batches(plan))
    for indices, (batch, kept) in zip(plan, seen):
        assert kept.tolist() == [i != 2 for i in indices]
        assert batch.images.shape[0] == int(kept.sum())
    assert sum(len(b.skipped) for b, _ in seen) == 1


@pytest.mark.parametrize("kind", ["swin", "deit_distilled"])
def test_swin_and_deit_distilled_train_and_harden(tiny, kind):
    """Swin (q, k per window, relative bias, shifted windows) and DeiT-distilled (two heads) through two steps."""
    torch.manual_seed(0)
    model, calib = tiny.model(kind), tiny.images(4, kind, seed=1)
    result = quantize_model(model, calib, repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    train = TensorImages(tiny.images(8, kind, seed=2), torch.arange(8) % 10)
    trainer = QATTrainer(model, result, train, TrainConfig(steps=2, batch_size=4, lr=1e-3, quant_lr=1e-3), calib)
    trainer.run()
    assert all(h["dgd"] > 0 and h["kd"] > 0 for h in trainer.history)
    done = trainer.finish()
    assert not any(isinstance(m, InformationRectifier) for m in done.model.modules())
    assert all(p.levels_used is not None for p in done.calibration.points)
    with torch.no_grad():
        assert torch.isfinite(done.model(calib)).all()
