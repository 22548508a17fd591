"""The patch embedding and the head as reconstruction units: named by the adapters (ViT, DeiT-distilled,
Swin), chained they are the model, reconstructing them lowers their output error, and the result is an
ordinary calibrated model that converts to an integer program."""

from __future__ import annotations

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.models.adapters import adapter_for
from vitquant.nn.linear import QuantConv2d, QuantLinear, WeightQuantMixin
from vitquant.nn.quant_point import quant_points
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer, quantizer_from_state
from vitquant.reconstruction import ReconstructionConfig, reconstruct
from vitquant.reconstruction.block import trainable_layers

pytestmark = pytest.mark.usefixtures("single_thread")

UNITS = {
    "vit": ["patch_embed", "blocks.0", "blocks.1", "head"],
    "deit_distilled": ["patch_embed", "blocks.0", "blocks.1", "head"],
    "swin": ["patch_embed", "layers.0.blocks.0", "layers.0.blocks.1", "layers.1.downsample", "layers.1.blocks.0",
             "layers.1.blocks.1", "head"],
}


def _calibrated(kind: str, tiny, qconfig=None, n: int = 8):
    torch.manual_seed(0)
    model = tiny.model(kind)
    x = tiny.images(n, kind, seed=1)
    return model, quantize_model(model, x, qconfig or repq_vit_qconfig(3, 3, "bitlog2-half-17")), x


def _chain(units, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for _, unit in units:
            x = unit(x)
    return x


@pytest.mark.parametrize("kind", list(UNITS))
def test_the_units_are_the_model_from_images_to_logits(tiny, kind):
    model, calibrated, x = _calibrated(kind, tiny, n=4)
    for m in (model, calibrated.model):
        adapter = adapter_for(m)
        units = adapter.reconstruction_units(m)
        assert [n for n, _ in units] == UNITS[kind]
        assert adapter.reconstruction_units(m, ends=False) == adapter.units(m)
        with torch.no_grad():
            assert torch.equal(_chain(units, x), m(x))
    units = dict(adapter_for(calibrated.model).reconstruction_units(calibrated.model))
    q = calibrated.model
    embed, head = trainable_layers(units["patch_embed"]), trainable_layers(units["head"])
    assert [type(m) for m in embed] == [QuantConv2d] and embed[0] is q.patch_embed.proj
    assert all(type(m) is QuantLinear for m in head) and len(head) == (2 if kind == "deit_distilled" else 1)


def _embedding_error(model, float_model, x) -> float:
    q = adapter_for(model).embedding(model)
    f = adapter_for(float_model).embedding(float_model)
    with torch.no_grad():
        return float(((q(x) - f(x)) ** 2).sum(-1).mean())


def test_reconstructing_the_ends_lowers_their_output_error_and_is_deterministic(tiny):
    model, calibrated, x = _calibrated("vit", tiny)
    cfg = ReconstructionConfig(iters=30, batch_size=4, weight_lr=5e-2, act_lr=1e-3, seed=3)
    a, b = reconstruct(model, calibrated, x, cfg), reconstruct(model, calibrated, x, cfg)
    embed, *_, head = a.blocks
    assert (embed.name, head.name) == ("patch_embed", "head")
    assert embed.loss_after < embed.loss_before and head.loss_after < head.loss_before
    assert (embed.layers, head.layers) == (1, 1)
    # against calibration alone, on the reconstruction images: the embedding's output, and the logits
    assert _embedding_error(a.model, model, x) < _embedding_error(calibrated.model, model, x)
    with torch.no_grad():
        fp = model(x)
        assert ((a.model(x) - fp) ** 2).sum(-1).mean() < ((calibrated.model(x) - fp) ** 2).sum(-1).mean()
        assert torch.equal(a.model(x), b.model(x))
    assert embed.loss_before == pytest.approx(_embedding_error(calibrated.model, model, x), rel=1e-5)
    blocks_only = reconstruct(model, calibrated, x, ReconstructionConfig(iters=2, batch_size=4, ends=False))
    assert [r.name for r in blocks_only.blocks] == ["blocks.0", "blocks.1"]
    assert torch.equal(blocks_only.model.patch_embed.proj.weight, calibrated.model.patch_embed.proj.weight)


@pytest.mark.parametrize("kind", ["swin", "deit_distilled"])
def test_swin_and_deit_distilled_reconstruct_their_ends(tiny, kind):
    model, calibrated, x = _calibrated(kind, tiny, n=4)
    result = reconstruct(model, calibrated, x, ReconstructionConfig(iters=4, batch_size=2, weight_lr=5e-2, act_lr=1e-3))
    assert [r.name for r in result.blocks] == UNITS[kind]
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()


def test_the_result_hardens_reports_levels_and_converts(tiny):
    from vitquant.integer.convert import convert_vit
    from vitquant.integer.execute import IntegerModel

    qconfig = repq_vit_qconfig(4, 4, "bitlog2-half-17").with_nonlinear(NonlinearConfig.everywhere("ivit", 6))
    model, calibrated, x = _calibrated("vit", tiny, qconfig)
    result = reconstruct(model, calibrated, x, ReconstructionConfig(iters=8, batch_size=4, weight_lr=5e-2, act_lr=1e-3))
    assert result.blocks[0].name == "patch_embed" and result.blocks[-1].name == "head"
    for m in result.model.modules():
        if isinstance(m, WeightQuantMixin) and m.weight_quantizer is not None:
            assert m.weight_rounding is None and type(m.weight_quantizer) is UniformQuantizer
            assert torch.equal(m.weight_fq, m.weight.detach())  # on the grid, the patch embedding's and head's too
    for _, point in quant_points(result.model):
        if point.quantizer is not None:
            assert type(quantizer_from_state(point.quantizer.state())) is type(point.quantizer)
    assert [p.name for p in result.calibration.points] == [p.name for p in calibrated.points]
    assert all(p.levels_used is not None for p in result.calibration.points if p.role != "residual")
    assert result.to_dict()["settings"]["ends"] is True
    program = convert_vit(result.model)
    with torch.no_grad():
        ref = result.model(x)
    out = IntegerModel(program)(x)
    assert torch.equal(IntegerModel(program).run(x).double(), IntegerModel(program, backend="float").run(x).double())
    # the integer program requantizes between ops where the simulation does not: close, not equal
    # (on this tiny random W4A4 model the calibrated model's program is no closer)
    assert torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1).mean() > 0.75
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5
