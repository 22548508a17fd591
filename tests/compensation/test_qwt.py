"""QwT compensation: the least-squares fit, the stage on tiny ViT and Swin models, the float mode, the
integer program (bit for bit with its exact simulation), clear errors."""

from __future__ import annotations

import pytest
import torch

from vitquant.calibration import quantize_model
from vitquant.compensation import CompensationConfig, compensate, compensation_methods, fit_linear
from vitquant.errors import ConfigError, DataError, NumericalError
from vitquant.integer import IntegerModel
from vitquant.integer.conversion import convert_model
from vitquant.integer.convert import plan_vit
from vitquant.integer.exact import exact_integer_logits, exact_simulation
from vitquant.nn.linear import QuantLinear
from vitquant.nn.quant_point import Mode, set_mode
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fit_recovers_a_correction_it_can_represent():
    torch.manual_seed(0)
    x = torch.randn(2000, 12)
    w, b = torch.randn(12, 5), torch.randn(5)
    got_w, got_b, r2 = fit_linear(x, x @ w + b)
    assert torch.allclose(got_w, w, atol=1e-4) and torch.allclose(got_b, b, atol=1e-4) and r2 > 0.999999
    # a ridge shrinks the solution, never past the exact one
    ridge_w, _, ridge_r2 = fit_linear(x, x @ w + b, ridge=0.1)
    assert ridge_w.norm() < w.norm() and 0.9 < ridge_r2 < r2
    with pytest.raises(ValueError, match="different rows"):
        fit_linear(x, torch.zeros(10, 5))
    # a constant input channel makes the Gram matrix singular at λ = 0: a finite, exact fit all the same
    x[:, 3] = 2.0
    got_w, got_b, r2 = fit_linear(x, x @ w + b)
    assert torch.isfinite(got_w).all() and torch.allclose(x @ got_w + got_b, x @ w + b, atol=1e-3) and r2 > 0.999999
    # chunked accumulation gives the one-shot solution
    import vitquant.compensation.linear as linear
    noisy = x @ w + b + torch.randn(2000, 5)
    one = fit_linear(x, noisy, ridge=1e-3)
    old, linear.CHUNK_ROWS = linear.CHUNK_ROWS, 300
    try:
        chunked = fit_linear(x, noisy, ridge=1e-3)
    finally:
        linear.CHUNK_ROWS = old
    assert torch.allclose(one[0], chunked[0], atol=1e-5) and abs(one[2] - chunked[2]) < 1e-9


def test_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="ridge"):
        CompensationConfig(ridge=-1.0)
    with pytest.raises(ConfigError, match="bits"):
        CompensationConfig(bits=1)
    assert "qwt" in compensation_methods()


def _calibrated(tiny, kind: str, nonlinear: str = "float"):
    torch.manual_seed(0)
    model = tiny.model(kind)
    x = tiny.images(8, kind, seed=1)
    qconfig = repq_vit_qconfig(4, 4, "bitlog2-half-17").with_nonlinear(NonlinearConfig.everywhere(nonlinear))
    return model, quantize_model(model, x, qconfig), x


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_each_block_gets_a_quantized_compensation_that_lowers_its_error(tiny, kind):
    model, calibrated, x = _calibrated(tiny, kind)
    result = compensate(model, calibrated, x)
    assert result.units and all(u.error_after < u.error_before for u in result.units)
    assert all(getattr(b, "compensation", None) is None for b in calibrated.model.modules())  # input untouched
    comps = [m.compensation for m in result.model.modules() if getattr(m, "compensation", None) is not None]
    assert len(comps) == len(result.units)
    for comp in comps:
        assert isinstance(comp, QuantLinear) and comp.weight_quantizer.max_levels == 256
        assert comp.input_quant.quantizer.max_levels == 256
    with torch.no_grad():  # on the calibration images the compensated model is closer to FP
        fp = model(x)
        assert (result.model(x) - fp).pow(2).mean() < (calibrated.model(x) - fp).pow(2).mean()
    assert {p.name for p in calibrated.points} < {p.name for p in result.calibration.points}  # its points reported


def test_float_mode_leaves_the_compensation_out(tiny):
    model, calibrated, x = _calibrated(tiny, "vit")
    result = compensate(model, calibrated, x)
    set_mode(result.model, Mode.FLOAT)
    set_mode(calibrated.model, Mode.FLOAT)  # the calibrated model's float function (reparameterized)
    with torch.no_grad():
        assert torch.equal(result.model(x), calibrated.model(x))


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_compensated_model_converts_to_an_integer_program(tiny, kind):
    model, calibrated, x = _calibrated(tiny, kind, nonlinear="ibert")
    result = compensate(model, calibrated, x)
    program = convert_model(result.model)
    assert sum(op.kind == "linear" for op in program.ops) > sum(op.kind == "linear" for op in convert_model(calibrated.model).ops)
    ints = IntegerModel(program).run(x)
    if kind == "vit":  # the exact simulation of the compensated model gives the program's integers
        plan = plan_vit(result.model)
        with exact_simulation(result.model, plan):
            assert torch.equal(exact_integer_logits(result.model, x, plan).to(ints.dtype), ints)
    logits = ints.double() * program.output_scale
    with torch.no_grad():
        fake, fp = result.model(x).double(), model(x).double()
    # the program computes the compensated model up to rounding: closer to it than it is to FP
    assert (logits - fake).pow(2).mean() < (fake - fp).pow(2).mean()


def test_errors(tiny):
    model, calibrated, x = _calibrated(tiny, "vit")
    with pytest.raises(ConfigError, match="unknown compensation 'nope'; choose one of qwt"):
        compensate(model, calibrated, x, CompensationConfig(method="nope"))
    with pytest.raises(DataError, match="compensation images: empty calibration set"):
        compensate(model, calibrated, x[:0])
    with pytest.raises(DataError, match=r"compensation images must be a float tensor \[N, 3, H, W\]"):
        compensate(model, calibrated, x[:, 0])
    with pytest.raises(NumericalError, match="compensation images must be finite"):
        compensate(model, calibrated, torch.full_like(x, float("nan")))
    result = compensate(model, calibrated, x)
    with pytest.raises(ConfigError, match="already compensated"):
        compensate(model, result.calibration, x)
