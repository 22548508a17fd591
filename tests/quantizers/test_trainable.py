"""Trainable quantizers: which kinds train, STE and LSQ gradients against their formulas and against
finite differences (LSQ steps of activations and weights), AdaRound's soft weight against finite
differences, hardening (at most one step from nearest rounding; LSQ weights onto their grid), QDrop."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.quantizers import (
    AdaLogQuantizer,
    BitLog2Quantizer,
    FixedPointQuantizer,
    LogSqrt2Quantizer,
    TwinGeluQuantizer,
    TwinSoftmaxQuantizer,
    UniformQuantizer,
    quantizer_from_state,
    quantizer_kinds,
)
from vitquant.quantizers.trainable import (
    AdaRoundWeight,
    FrozenActivation,
    LSQActivation,
    LSQWeight,
    round_ste,
    trainable_activation,
)


def test_every_kind_declares_whether_it_trains():
    declared = {cls.kind: cls.trainable for cls in (
        UniformQuantizer, BitLog2Quantizer, LogSqrt2Quantizer, AdaLogQuantizer, TwinSoftmaxQuantizer, TwinGeluQuantizer,
        FixedPointQuantizer)}
    assert set(declared) == set(quantizer_kinds())  # a new kind must be added here
    assert declared == {"uniform": True, "bitlog2": False, "log_sqrt2": False, "adalog": False,
                        "twin_softmax": False, "twin_gelu": False, "fixed_point": False}


def test_trainable_activation_picks_lsq_for_uniform_and_frozen_otherwise():
    assert isinstance(trainable_activation(UniformQuantizer(4, torch.tensor(0.1), torch.tensor(3.0))), LSQActivation)
    log_q = LogSqrt2Quantizer(4, 17, torch.tensor(1.0))
    assert isinstance(trainable_activation(log_q), FrozenActivation)


def test_round_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([-1.7, -0.2, 0.4, 2.6], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


def _uniform(scale=0.25, zero=3.0, bits=3) -> UniformQuantizer:
    return UniformQuantizer(bits, torch.tensor(scale), torch.tensor(zero))


def test_lsq_starts_as_the_fitted_quantizer():
    q = _uniform()
    x = torch.linspace(-2, 2, 1001) + 0.0123
    assert torch.equal(LSQActivation(q)(x), q(x))  # bit for bit: the same rounded 1/Δ


def test_lsq_step_gradient_is_the_lsq_formula():
    """∂x̂/∂Δ = round(x/Δ) - x/Δ for x/Δ inside [-z, qmax - z], the bound outside; ∂x̂/∂x = 1 inside, 0 outside."""
    q = _uniform(scale=0.25, zero=3.0, bits=3)  # codes -3..4: range [-0.75, 1.0]
    x = torch.tensor([-3.0, -0.61, -0.1, 0.05, 0.33, 0.9, 1.07, 2.0], requires_grad=True)
    lsq = LSQActivation(q)
    for i in range(len(x)):
        lsq.zero_grad()
        x.grad = None
        lsq(x)[i].backward()
        v = float(x[i].detach()) / 0.25
        inside = -3 <= v <= 4
        expected = (round(v) - v) if inside else (-3.0 if v < 0 else 4.0)
        assert float(lsq.scale.grad) == pytest.approx(expected, abs=1e-5)
        assert float(x.grad[i]) == (1.0 if inside else 0.0)


def test_lsq_hardens_to_a_uniform_quantizer_with_the_learned_step():
    lsq = LSQActivation(_uniform())
    with torch.no_grad():
        lsq.scale.mul_(1.5)
    hard = lsq.harden()
    assert isinstance(hard, UniformQuantizer) and float(hard.scale) == pytest.approx(0.375)
    x = torch.linspace(-2, 2, 999) + 0.001
    assert torch.equal(hard(x), lsq(x))
    again = quantizer_from_state(hard.state())
    assert torch.equal(again(x), hard(x)) and again.max_levels == 8


def test_frozen_activation_quantizes_and_passes_the_gradient_straight_through():
    q = LogSqrt2Quantizer(4, 17, torch.tensor(1.0))
    x = torch.rand(200, requires_grad=True)
    frozen = FrozenActivation(q)
    y = frozen(x)
    assert torch.equal(y.detach(), q(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(200))
    assert frozen.harden() is q and not list(frozen.parameters())


def _weight_case(seed: int = 0) -> tuple[torch.Tensor, UniformQuantizer]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 20, generator=g)
    scale = (w.abs().amax(dim=1, keepdim=True) / 6).clamp(min=1e-3)
    return w, UniformQuantizer(4, scale, torch.full((6, 1), 7.0))


def test_adaround_starts_at_the_float_weight_inside_the_range():
    w, q = _weight_case()
    rounding = AdaRoundWeight(q, w)
    inside = ((w * q.inv_scale).floor() >= q.code_min) & ((w * q.inv_scale).floor() + 1 <= q.code_max)
    assert torch.allclose(rounding()[inside], w[inside], atol=1e-5)


def test_adaround_initial_hard_rounding_is_round_to_nearest():
    w, q = _weight_case()
    rounding = AdaRoundWeight(q, w)
    assert torch.equal(rounding.hard_codes(), q._signed_codes(w.clone()))


def test_adaround_soft_weight_gradient_matches_finite_differences():
    """Ŵ(V) is smooth where h is not clamped: autograd equals central differences (float64)."""
    w, q = _weight_case(1)
    rounding = AdaRoundWeight(q, w).double()
    with torch.no_grad():
        rounding.alpha.copy_(torch.randn(rounding.alpha.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    weights = torch.randn(w.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (rounding() * weights).sum().backward()
    grad = rounding.alpha.grad.clone()
    eps = 1e-6
    alpha = rounding.alpha.detach().clone()
    for index in [(0, 0), (1, 5), (2, 7), (3, 19), (5, 11)]:
        with torch.no_grad():
            rounding.alpha[index] = alpha[index] + eps
            up = float((rounding() * weights).sum())
            rounding.alpha[index] = alpha[index] - eps
            down = float((rounding() * weights).sum())
            rounding.alpha[index] = alpha[index]
        assert grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_adaround_regularizer_gradient_matches_finite_differences_and_vanishes_at_0_and_1():
    w, q = _weight_case()
    rounding = AdaRoundWeight(q, w).double()
    beta = 4.0
    rounding.regularizer(beta).backward()
    grad = rounding.alpha.grad.clone()
    eps = 1e-6
    index = (2, 3)
    with torch.no_grad():
        a = float(rounding.alpha[index])
        rounding.alpha[index] = a + eps
        up = float(rounding.regularizer(beta))
        rounding.alpha[index] = a - eps
        down = float(rounding.regularizer(beta))
        rounding.alpha[index] = a
    assert grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)
    with torch.no_grad():
        rounding.alpha.copy_(torch.where(rounding.alpha >= 0, 10.0, -10.0))  # h clamped to exactly 0 / 1
    assert float(rounding.regularizer(beta).detach()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardened_codes_are_within_one_step_of_nearest_and_reproduced_by_the_quantizer(seed):
    w, q = _weight_case(seed)
    rounding = AdaRoundWeight(q, w)
    with torch.no_grad():  # any learned state
        rounding.alpha.copy_(torch.randn(rounding.alpha.shape, generator=torch.Generator().manual_seed(seed + 10)) * 3)
    hard_weight, quantizer = rounding.harden()
    codes = rounding.hard_codes()
    nearest = q._signed_codes(w.clone())
    assert (codes - nearest).abs().max() <= 1
    assert (codes != nearest).any()  # the test does exercise rounding the other way
    # the fitted quantizer gives back exactly the learned codes from the hardened weight
    assert torch.equal(quantizer.to_integer(hard_weight).mantissa, codes.to(torch.int64))
    assert torch.equal(quantizer(hard_weight), hard_weight)


def test_qdrop_keeps_a_fraction_of_elements_at_full_precision_while_training():
    q = _uniform(scale=0.3)
    x = torch.linspace(-0.7, 0.95, 20_000) + 0.0017
    lsq = LSQActivation(q, drop_prob=0.5, generator=torch.Generator().manual_seed(0))
    y = lsq(x).detach()
    kept = (y == x) & (q(x) != x)
    assert 0.45 < kept.float().mean() / (q(x) != x).float().mean() < 0.55
    lsq.eval()
    assert torch.allclose(lsq(x), q(x), atol=1e-6)  # no dropping outside training
    with pytest.raises(ConfigError, match="QDrop"):
        LSQActivation(q, drop_prob=1.0)


def test_qdrop_draws_its_mask_on_the_generator_and_applies_it_on_the_input_device():
    """A CPU generator with an input on another device (``meta`` stands in for a GPU here): the mask is
    drawn on the CPU, so a seeded run drops the same elements on any device, and moved to the input's."""
    q = _uniform(scale=0.3)
    x = torch.linspace(-0.7, 0.95, 64)
    lsq = LSQActivation(q, drop_prob=0.5, generator=torch.Generator().manual_seed(0))
    out = lsq._drop(x.to("meta"), q(x).to("meta"))
    assert out.device.type == "meta" and out.shape == x.shape
    lsq.generator.manual_seed(0)
    expected = lsq._drop(x, q(x))
    lsq.generator.manual_seed(0)
    assert torch.equal(lsq._drop(x, q(x)), expected)  # the same draw for the same seed


# ------------------------------------------------------------------------- LSQ: activations and weights
def _lsq_pair(kind: str, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int = 4):
    """(module, input tensor whose gradient is ∂x̂/∂x, x̂ as a function) for an LSQ activation or weight (float64)."""
    q = UniformQuantizer(bits, scale.float(), zero.float())
    if kind == "activation":
        module = LSQActivation(q).double()
        x = x.clone().requires_grad_(True)
        return module, x, lambda: module(x)
    module = LSQWeight(q, x.float()).double()
    with torch.no_grad():
        module.weight.copy_(x)
    return module, module.weight, lambda: module()


def _away_from_steps(x: torch.Tensor, scale: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor) -> torch.Tensor:
    """Elements at least 0.05 of a step from any rounding step (k + ½) and from the clamp bounds."""
    v = x / scale
    return ((v - v.floor() - 0.5).abs() > 0.05) & (v > code_min + 0.05) & (v < code_max - 0.05)


@pytest.mark.parametrize("kind", ["activation", "weight"])
def test_lsq_gradients_are_the_ste_formula_and_match_finite_differences(kind):
    """Away from rounding steps and bounds, x̂ = round(x/Δ)·Δ is locally k·Δ: its finite differences are
    ∂/∂Δ = k and ∂/∂x = 0. The STE replaces round by the identity in the backward, so autograd must give
    ∂/∂Δ = k - x/Δ (LSQ) and ∂/∂x = 1: the finite differences of x̂ with the rounding residual
    round(x/Δ) - x/Δ held at its value. Outside the code range: ∂/∂Δ = the bound, ∂/∂x = 0."""
    g = torch.Generator().manual_seed(4)
    rows = 6
    scale = (torch.rand(rows, 1, generator=g, dtype=torch.float64) * 0.2 + 0.05) if kind == "weight" else torch.tensor(0.13, dtype=torch.float64)
    zero = torch.full((rows, 1), 7.0, dtype=torch.float64) if kind == "weight" else torch.tensor(5.0, dtype=torch.float64)
    x = torch.randn(rows, 40, generator=g, dtype=torch.float64) * 1.2
    module, leaf, forward = _lsq_pair(kind, x, scale, zero)
    weights = torch.randn(rows, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (forward() * weights).sum().backward()
    grad_x, grad_scale = leaf.grad.clone(), module.scale.grad.clone()

    s = module.scale.detach()
    v = x / s
    inside = (v >= module.code_min) & (v <= module.code_max)
    clamped = torch.clamp(v, module.code_min, module.code_max)
    residual = torch.round(clamped) - clamped
    # STE: 1 inside, 0 outside (up to Δ·(1/Δ) in float64)
    assert torch.allclose(grad_x, torch.where(inside, weights, torch.zeros_like(weights)), rtol=1e-14, atol=0)
    per_element = torch.where(inside, residual, torch.where(v < module.code_min, module.code_min, module.code_max))
    expected_scale = (per_element * weights).sum(dim=1, keepdim=True) if kind == "weight" else (per_element * weights).sum()
    assert torch.allclose(grad_scale, expected_scale.reshape(grad_scale.shape), rtol=1e-12, atol=1e-12)

    # finite differences, elementwise, where the quantizer is locally smooth
    eps = 1e-7
    away = _away_from_steps(x, s, module.code_min, module.code_max)
    assert away.sum() > 100 and (~inside).sum() > 0  # the test exercises both regions
    codes = torch.round(v)
    frozen = lambda xx, ss: (xx / ss + residual) * ss  # x̂ with the rounding residual held: the STE's function
    true = lambda xx, ss: torch.round(xx / ss) * ss
    d_true_scale = (true(x, s + eps) - true(x, s - eps)) / (2 * eps)
    d_true_x = (true(x + eps, s) - true(x - eps, s)) / (2 * eps)
    d_frozen_scale = (frozen(x, s + eps) - frozen(x, s - eps)) / (2 * eps)
    d_frozen_x = (frozen(x + eps, s) - frozen(x - eps, s)) / (2 * eps)
    assert torch.allclose(d_true_scale[away], codes[away], atol=1e-6)  # the forward is k·Δ there
    assert torch.allclose(d_true_x[away], torch.zeros_like(x)[away])
    assert torch.allclose(d_frozen_scale[away], residual[away], atol=1e-6)  # = the LSQ formula above
    assert torch.allclose(d_frozen_x[away], torch.ones_like(x)[away], atol=1e-6)


def test_lsq_weight_starts_as_the_fitted_quantizer_and_hardens_onto_its_grid():
    w, q = _weight_case(3)
    lsq = LSQWeight(q, w)
    assert torch.equal(lsq(), q(w))
    with torch.no_grad():  # any learned state
        lsq.weight.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
        lsq.scale.mul_(1.3)
    hard_weight, quantizer = lsq.harden()
    assert isinstance(quantizer, UniformQuantizer) and torch.equal(quantizer.scale, lsq.scale.detach())
    assert torch.equal(hard_weight, lsq().detach())  # the value training used, exactly
    assert torch.equal(quantizer(hard_weight), hard_weight)  # the fitted quantizer gives back these codes
    assert torch.equal(quantizer(lsq.weight.detach()), hard_weight)  # and the same from the latent weight
    assert torch.equal(quantizer.zero_point, q.zero_point)
    with pytest.raises(ConfigError, match="uniform weight quantizer"):
        LSQWeight(LogSqrt2Quantizer(4, 17, torch.tensor(1.0)), w)
