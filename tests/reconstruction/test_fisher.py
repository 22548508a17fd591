"""BRECQ's Fisher weighting: the weights are (|∂KL/∂z| + 1)² by finite differences, 1 where the
quantized and FP models agree, and a Fisher-weighted reconstruction trains, reports and is deterministic."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from vitquant.calibration import quantize_model
from vitquant.models.adapters import adapter_for
from vitquant.qconfig import repq_vit_qconfig
from vitquant.reconstruction import ReconstructionConfig, block_error, reconstruct
from vitquant.reconstruction.fisher import FISHER_DAMPING, fisher_weights, kl_per_image

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ReconstructionConfig(iters=8, batch_size=4, weight_lr=5e-2, act_lr=1e-3, loss="fisher")


def test_weights_are_the_damped_squared_kl_gradient_by_finite_differences():
    torch.manual_seed(0)
    unit, tail = nn.Linear(5, 4).double(), [nn.Tanh(), nn.Linear(4, 3).double()]
    x, fp_logits = torch.randn(6, 2, 5, dtype=torch.float64), torch.randn(6, 2, 3, dtype=torch.float64)
    w = fisher_weights(unit, x, tail, fp_logits)
    assert w.shape == (6, 2, 4) and (w >= FISHER_DAMPING**2).all()
    z = unit(x).detach()

    def loss(z: torch.Tensor) -> float:
        out = z
        for m in tail:
            out = m(out)
        return float(kl_per_image(out, fp_logits).detach())

    eps = 1e-6
    for index in [(0, 0, 0), (3, 1, 2), (5, 0, 3)]:
        up, down = z.clone(), z.clone()
        up[index] += eps
        down[index] -= eps
        grad = (loss(up) - loss(down)) / (2 * eps)
        assert float(w[index]) == pytest.approx((abs(grad) + FISHER_DAMPING) ** 2, rel=1e-6)
    assert all(p.grad is None for p in [*unit.parameters(), *tail[1].parameters()])  # nothing trains here


def test_weights_are_exactly_one_where_the_model_matches_full_precision(tiny):
    torch.manual_seed(0)
    model = tiny.model("vit").eval()
    x = tiny.images(4, "vit", seed=1)
    chain = adapter_for(model).reconstruction_units(model)
    with torch.no_grad():
        z = chain[0][1](x)
        fp_logits = z
        for _, unit in chain[1:]:
            fp_logits = unit(fp_logits)
    w = fisher_weights(chain[1][1], z, [u for _, u in chain[2:]], fp_logits)  # the FP block itself: KL 0, gradient 0
    assert (w - 1).abs().max() < 1e-4  # 0 up to float32 rounding of the softmax
    w_off = fisher_weights(chain[1][1], z, [u for _, u in chain[2:]], fp_logits.roll(1, 0))  # another image's logits
    assert (w_off - 1).abs().max() > 1e-2
    with pytest.raises(ValueError, match="3 FP logits for 4 inputs"):
        fisher_weights(chain[1][1], z, [u for _, u in chain[2:]], fp_logits[:3])


@pytest.mark.parametrize("ends", [True, False])
def test_a_fisher_weighted_reconstruction_trains_every_unit_deterministically(tiny, ends):
    torch.manual_seed(0)
    model = tiny.model("vit")
    x = tiny.images(8, "vit", seed=1)
    calibrated = quantize_model(model, x, repq_vit_qconfig(4, 4, "bitlog2-half-17"))
    cfg = replace(FAST, ends=ends)
    a, b = reconstruct(model, calibrated, x, cfg), reconstruct(model, calibrated, x, cfg)
    names = [n for n, _ in adapter_for(model).reconstruction_units(model, ends)]
    assert [r.name for r in a.blocks] == names and a.to_dict()["settings"]["loss"] == "fisher"
    assert [r.loss_after for r in a.blocks] == [r.loss_after for r in b.blocks]
    assert all(r.loss_after <= r.loss_before for r in a.blocks)  # a worse unit is reverted
    mse = reconstruct(model, calibrated, x, replace(cfg, loss="mse"))
    # the first unit has the same input in both: its weights (>= 1, > 1 where the KL moves) make its
    # Fisher-weighted error larger than its plain one
    assert a.blocks[0].loss_before > mse.blocks[0].loss_before


def test_block_error_weights_each_element():
    block = nn.Identity()
    x, y = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    w = torch.full((3, 2, 4), 2.0)
    assert block_error(block, x, y) == 4.0 and block_error(block, x, y, w) == 8.0


def test_weights_of_another_shape_are_a_config_error():
    from vitquant.errors import ConfigError
    from vitquant.reconstruction import reconstruct_block

    block = nn.Identity()
    x, y = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    with pytest.raises(ConfigError, match=r"unit: error weights of shape \(3, 2\) for outputs of shape \(3, 2, 4\)"):
        reconstruct_block(block, x, y, FAST, seed=0, name="unit", weights=torch.ones(3, 2))
