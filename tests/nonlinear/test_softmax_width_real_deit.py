"""Regression (real DeiT-Tiny from ../shared; skipped when absent): at W8A8 with I-ViT's kernels and
integer residual adds, the quantized model agrees with FP on at least 85 % of held-out images, which the
previous 8-bit floored Shiftmax output does not (it keeps only part of each attention row's mass:
measured 71.9 % against 92.7 % with 16 bits on 96 images when the issue was filed).

Kept cheap: 16 calibration images, the data-only (percentile) search, 96 evaluation images. The
simulated kernels are the integer program's bit for bit (tests/integer), so this is the program's
agreement too.
"""

from __future__ import annotations

import pytest
import torch

import conftest

from vitquant.calibration import quantize_model
from vitquant.evaluation import FidelityMeter
from vitquant.nonlinear import NonlinearConfig
from vitquant.recipes import build_qconfig

pytestmark = pytest.mark.real_model

CALIB_IMAGES = 16
EVAL_IMAGES = 96


def _agreement(model, calib_x, eval_x, fp_logits, softmax_bits: int | None) -> float:
    qconfig = build_qconfig("repq-vit", 8, 8, attn_quant="uniform", search="percentile")
    nonlinear = NonlinearConfig.everywhere("ivit", softmax_bits=softmax_bits)
    qmodel = quantize_model(model, calib_x, qconfig.with_nonlinear(nonlinear)).model
    with torch.no_grad():
        logits = torch.cat([qmodel(eval_x[i:i + 32]) for i in range(0, len(eval_x), 32)])
    meter = FidelityMeter()
    meter.update(fp_logits, logits)
    return meter.top1_agreement


def test_w8a8_ivit_agrees_with_fp_and_an_8_bit_shiftmax_would_not():
    model, _, _, calib_x, eval_x = conftest.real_deit(CALIB_IMAGES, EVAL_IMAGES)
    with torch.no_grad():
        fp_logits = model(eval_x)
    assert _agreement(model, calib_x, eval_x, fp_logits, None) >= 85.0  # the default: 16-bit Shiftmax
    assert _agreement(model, calib_x, eval_x, fp_logits, 8) < 85.0  # what this test guards against
