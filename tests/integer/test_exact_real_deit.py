"""The exact simulation on the real DeiT-Tiny (from ../shared; skipped when absent): W8A8 with integer
kernels, calibrated on 8 images, gives the integer program's logits bit for bit on 4 other images.

Kept cheap: the data-only (percentile) search at every point and I-BERT kernels (about 3 minutes on
two cores, most of it calibration). Nothing here is expected to be off by one: the simulation runs the
program's own ops on float64 integers and reads values back exactly at module boundaries
(:mod:`vitquant.integer.exact`); the :class:`~vitquant.integer.exact.Agreement` counts say how far
any failure would be (images within one least significant bit of the output scale, largest gap).
"""

from __future__ import annotations

import pytest
import torch

import conftest

from vitquant.calibration import quantize_model
from vitquant.integer.exact import Agreement, exact_integer_logits, exact_simulation
from vitquant.integer.execute import IntegerModel
from vitquant.nonlinear import NonlinearConfig
from vitquant.recipes import build_qconfig

pytestmark = pytest.mark.real_model

CALIB_IMAGES = 8
EVAL_IMAGES = 4


def test_real_deit_tiny_exact_simulation_is_bit_identical_to_the_program():
    model, _, _, calib_x, eval_x = conftest.real_deit(CALIB_IMAGES, EVAL_IMAGES)
    qconfig = build_qconfig("repq-vit", 8, 8, attn_quant="uniform", search="percentile")
    qmodel = quantize_model(model, calib_x, qconfig.with_nonlinear(NonlinearConfig.everywhere("ibert", 8))).model
    with torch.no_grad():
        fake_quant = qmodel(eval_x)
    with exact_simulation(qmodel) as plan:
        exact = exact_integer_logits(qmodel, eval_x, plan)
        with torch.no_grad():
            logits = qmodel(eval_x)
    program = IntegerModel(plan.program, gemm="float").run(eval_x)  # int64, equal to gemm="int" (tested)
    agreement = Agreement.of(exact, program)
    assert agreement == Agreement(EVAL_IMAGES, EVAL_IMAGES, EVAL_IMAGES, 0)
    assert torch.equal(logits, program.double() * plan.program.output_scale)
    with torch.no_grad():  # off again: the fake-quantized model, unchanged
        assert torch.equal(qmodel(eval_x), fake_quant)
