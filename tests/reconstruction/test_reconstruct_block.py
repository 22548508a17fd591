"""One block's reconstruction on a tiny calibrated ViT: the swap, lower error, determinism."""

from __future__ import annotations

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.calibration.passes import UnitCache
from vitquant.models.adapters import adapter_for
from vitquant.nn.linear import WeightQuantMixin
from vitquant.nn.quant_point import quant_points
from vitquant.qconfig import repq_vit_qconfig
from vitquant.quantizers import UniformQuantizer
from vitquant.quantizers.trainable import AdaRoundWeight, FrozenActivation, LSQActivation
from vitquant.reconstruction import ReconstructionConfig, TrainableBlock, block_error, reconstruct_block

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only add latency


@pytest.fixture(scope="module")
def case():
    """A tiny ViT at W3A3, the calibrated model, block 0's quantized input and the FP block's output."""
    from conftest import images, make_vit, VIT_IMG

    torch.manual_seed(0)
    model = make_vit()
    x = images(24, VIT_IMG, seed=1)
    result = quantize_model(model, x, repq_vit_qconfig(3, 3, "bitlog2-half-17"))
    q_block = adapter_for(result.model).units(result.model)[0][1]
    f_block = model.blocks[0]
    x_q = UnitCache([("blocks.0", q_block)]).run(result.model, [x], q_block, "input")[0][0]
    x_f = UnitCache([("blocks.0", f_block)]).run(model, [x], f_block, "input")[0][0]
    with torch.no_grad():
        target = f_block(x_f)
    return result, q_block, x_q, target


def _state(block: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for m in block.modules():
        if isinstance(m, WeightQuantMixin):
            out += [m.weight.detach().clone(), m.weight_quantizer.scale.clone()]
    for _, p in quant_points(block):
        if isinstance(p.quantizer, UniformQuantizer):
            out.append(p.quantizer.scale.clone())
    return out


def test_install_swaps_in_trainable_quantizers_and_restore_puts_them_back(case):
    import copy

    _, block, x_q, _ = case
    block = copy.deepcopy(block)
    before = [p.quantizer for _, p in quant_points(block)]
    swap = TrainableBlock(block)
    swap.install()
    assert len(swap.layers) == 4 and all(isinstance(m.weight_rounding, AdaRoundWeight) for m in swap.layers)
    kinds = {type(p.quantizer) for _, p in quant_points(block)}
    assert kinds == {LSQActivation, FrozenActivation}  # the attention map (BitLog2) stays frozen
    assert len(swap.step_parameters()) == 7 and len(swap.weight_parameters()) == 4
    out = block(x_q)
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in swap.step_parameters() + swap.weight_parameters())
    swap.restore()
    assert [p.quantizer for _, p in quant_points(block)] == before
    assert all(m.weight_rounding is None for m in swap.layers)


def test_reconstruction_lowers_the_block_error(case):
    import copy

    _, block, x_q, target = case
    block = copy.deepcopy(block)
    report = reconstruct_block(block, x_q, target, ReconstructionConfig(iters=40, batch_size=8, weight_lr=5e-2, act_lr=1e-3), seed=0)
    assert report.loss_before == pytest.approx(block_error(case[1], x_q, target))
    assert report.loss_after == pytest.approx(block_error(block, x_q, target))
    assert report.loss_after < 0.8 * report.loss_before and not report.reverted
    assert (report.layers, report.steps, report.frozen) == (4, 7, 1)
    # hardened: ordinary fitted quantizers, weights on their grid
    for m in block.modules():
        if isinstance(m, WeightQuantMixin):
            assert type(m.weight_quantizer) is UniformQuantizer and m.weight_rounding is None
            assert torch.equal(m.weight_fq, m.weight.detach())
    assert all(type(p.quantizer) is not LSQActivation for _, p in quant_points(block))


def test_reconstruction_is_deterministic_for_a_seed(case):
    import copy

    _, block, x_q, target = case
    cfg = ReconstructionConfig(iters=10, batch_size=8, drop_prob=0.5)
    runs = []
    for seed in (3, 3, 4):
        b = copy.deepcopy(block)
        reconstruct_block(b, x_q, target, cfg, seed=seed)
        runs.append(_state(b))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_a_unit_worse_after_hardening_keeps_its_calibrated_quantizers(case):
    """Learning rates far too high wreck the steps: the hardened block is worse, so it is reverted to
    exactly the calibrated weights and quantizers (same outputs), and the report says so."""
    import copy

    _, block, x_q, target = case
    wrecked = copy.deepcopy(block)
    report = reconstruct_block(wrecked, x_q, target, ReconstructionConfig(iters=5, batch_size=8, weight_lr=10.0, act_lr=10.0), seed=0)
    assert report.reverted and report.loss_after == pytest.approx(report.loss_before)
    assert all(torch.equal(a, b) for a, b in zip(_state(wrecked), _state(block)))
    with torch.no_grad():
        assert torch.equal(wrecked(x_q), block(x_q))
    assert report.to_dict()["reverted"] is True
    with pytest.raises(RuntimeError, match="revertible"):  # QAT's whole-model swap keeps no copy of the weights
        TrainableBlock(copy.deepcopy(block)).revert()
