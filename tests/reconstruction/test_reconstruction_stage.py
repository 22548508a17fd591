"""Reconstruction as a stage on tiny calibrated models: every block, a calibrated model like any other
(levels, states, integer program), the input model untouched, clear errors."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError, DataError
from vitquant.models.adapters import adapter_for
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import quant_points
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer, quantizer_from_state
from vitquant.reconstruction import ReconstructionConfig, reconstruct

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only add latency

FAST = ReconstructionConfig(iters=8, batch_size=4, weight_lr=5e-2, act_lr=1e-3)


def _calibrated(kind: str, tiny, qconfig=None):
    torch.manual_seed(0)
    model = tiny.model(kind)
    x = tiny.images(8, kind, seed=1)
    return model, quantize_model(model, x, qconfig or repq_vit_qconfig(4, 4, "bitlog2-half-17")), x


def _fingerprint(model: torch.nn.Module) -> list[torch.Tensor]:
    out = [p.detach().clone() for p in model.parameters()]
    for _, point in quant_points(model):
        if point.quantizer is not None:
            out += [t.clone() for t in point.quantizer.state().tensors.values()]
    return out


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_every_unit_is_reconstructed_into_ordinary_fitted_quantizers(tiny, kind):
    model, calibrated, x = _calibrated(kind, tiny)
    before = _fingerprint(calibrated.model)
    result = reconstruct(model, calibrated, x, FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, _fingerprint(calibrated.model)))  # input untouched
    units = [n for n, _ in adapter_for(model).reconstruction_units(model)]  # ends included by default
    assert [b.name for b in result.blocks] == units
    assert all(b.loss_after >= 0 and b.seconds > 0 for b in result.blocks)
    assert result.images == 8 and result.seconds > 0 and result.model is result.calibration.model
    for m in result.model.modules():  # weights hardened onto their grid: the cache is the weight itself
        if isinstance(m, WeightQuantMixin) and m.weight_quantizer is not None:
            assert m.weight_rounding is None and type(m.weight_quantizer) is UniformQuantizer
    for _, point in quant_points(result.model):
        if point.quantizer is not None:
            again = quantizer_from_state(point.quantizer.state())
            assert type(again) is type(point.quantizer)
    # levels counted again on the reconstruction images, every point reported
    assert [p.name for p in result.calibration.points] == [p.name for p in calibrated.points]
    assert all(p.levels_used is not None and 0 < p.levels_used <= p.max_levels for p in result.calibration.points)
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()
    settings = result.to_dict()["settings"]
    assert settings["iters"] == 8 and settings["batch_size"] == 4


def test_reconstruction_is_deterministic_and_lowers_the_model_error(tiny):
    model, calibrated, x = _calibrated("vit", tiny, repq_vit_qconfig(3, 3, "bitlog2-half-17"))
    cfg = ReconstructionConfig(iters=30, batch_size=4, weight_lr=5e-2, act_lr=1e-3, drop_prob=0.5, seed=5)
    a, b = reconstruct(model, calibrated, x, cfg), reconstruct(model, calibrated, x, cfg)
    assert all(torch.equal(p, q) for p, q in zip(_fingerprint(a.model), _fingerprint(b.model)))
    assert [r.loss_after for r in a.blocks] == [r.loss_after for r in b.blocks]
    with torch.no_grad():
        fp, cal, rec = model(x), calibrated.model(x), a.model(x)
    assert ((rec - fp) ** 2).mean() < ((cal - fp) ** 2).mean()


def test_reconstructed_model_converts_to_an_integer_program(tiny):
    from vitquant.integer.convert import convert_vit
    from vitquant.integer.execute import IntegerModel

    qconfig = repq_vit_qconfig(4, 4, "bitlog2-half-17").with_nonlinear(NonlinearConfig.everywhere("ivit", 6))
    model, calibrated, x = _calibrated("vit", tiny, qconfig)
    result = reconstruct(model, calibrated, x, replace(FAST, ends=False))  # blocks only (ends: test_reconstruction_ends)
    kernels = {m.active for m in result.model.modules() if getattr(m, "slots", None) is not None}
    assert kernels == {"ivit"}  # the kernels run again after the block trained with their float ops
    program = convert_vit(result.model)
    with torch.no_grad():
        ref = result.model(x)
    out = IntegerModel(program)(x)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def test_errors(tiny):
    model, calibrated, x = _calibrated("vit", tiny)
    with pytest.raises(ConfigError, match="--recon-images 9: only 8 calibration images"):
        reconstruct(model, calibrated, x, ReconstructionConfig(images=9, iters=1))
    with pytest.raises(DataError, match="reconstruction images"):
        reconstruct(model, calibrated, x[:, :2], FAST)
    frozen = replace(calibrated, model=copy.deepcopy(calibrated.model))
    for m in frozen.model.modules():
        if isinstance(m, WeightQuantMixin) and m.weight_quantizer is not None:
            m.weight_quantizer.trainable = False  # a kind that does not train
    with pytest.raises(ConfigError, match="needs uniformly quantized weights"):
        reconstruct(model, frozen, x, FAST)
