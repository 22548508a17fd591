"""Calibrated tiny models and their integer programs, shared by the integer tests (cached per case)."""

from __future__ import annotations

import functools

import torch

from vitquant.calibration import quantize_model
from vitquant.integer.convert import convert_vit
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.recipes import build_qconfig

import conftest


def qconfig_for(case: str):
    """Kernels at their own input widths (16-bit GELU/LayerNorm inputs, 16-bit softmax outputs) unless
    a width is named. ``w8a8-uniform``: 8-bit uniform attention map, I-BERT kernels; ``w4a4-bitlog2``:
    BitLog2 Half_17, I-ViT kernels; ``w8a8-mixed``: FQ-ViT softmax/LayerNorm (PTF inputs) with I-BERT GELU;
    ``w8a8-sqrt2|adalog|twin``: 4-bit log√2, AdaLog or twin-uniform attention maps (table attn@v), I-BERT;
    ``w4a4-adalog-gelu``: as w4a4-bitlog2 with AdaLog's shifted post-GELU (table lookup before fc2, over
    the 2^16 GELU input codes);
    ``w3a3-ends8``: W3A3 with BitLog2 Single_17, the patch embedding and head at 8 bits, I-ViT with its
    GELU/LayerNorm inputs constrained to 6 bits (``--nonlinear-bits 6``); ``w8a8-mixed`` constrains them to
    8 bits (FQ-ViT's PTF point)."""
    if case == "w8a8-uniform":
        return build_qconfig("repq-vit", 8, 8, attn_quant="uniform").with_nonlinear(NonlinearConfig.everywhere("ibert"))
    if case == "w4a4-bitlog2":
        return repq_vit_qconfig(4, 4, "bitlog2-half-17").with_nonlinear(NonlinearConfig.everywhere("ivit"))
    if case == "w8a8-mixed":
        nl = NonlinearConfig(ops={"softmax": "fqvit", "layernorm": "fqvit", "gelu": "ibert", "residual": "integer"}, bits=8)
        return repq_vit_qconfig(8, 8, "bitlog2-half-17", attn_bits=4).with_nonlinear(nl)
    if case == "w8a8-distilled":  # DeiT-distilled: two tokens, two heads averaged
        return build_qconfig("repq-vit", 8, 8, attn_quant="uniform").with_nonlinear(NonlinearConfig.everywhere("ivit"))
    if case == "w4a4-adalog-gelu":  # BitLog2 attention, AdaLog post-GELU (shifted GELU), I-ViT kernels at 6 bits
        return build_qconfig("bitlog2-half-17", 4, 4, post_gelu="adalog").with_nonlinear(NonlinearConfig.everywhere("ivit"))
    if case == "w3a3-ends8":
        return build_qconfig("bitlog2-single-17", 3, 3, ends_bits=8).with_nonlinear(NonlinearConfig.everywhere("ivit", 6))
    if case in ("w8a8-sqrt2", "w8a8-adalog", "w8a8-twin"):  # attention maps given as tables (4 bits)
        scheme = {"w8a8-sqrt2": "sqrt2-17", "w8a8-adalog": "adalog", "w8a8-twin": "twin-uniform"}[case]
        qconfig = build_qconfig("repq-vit", 8, 8, attn_quant=scheme, attn_bits=4)
        return qconfig.with_nonlinear(NonlinearConfig.everywhere("ibert"))
    raise KeyError(case)


@functools.lru_cache(maxsize=None)
def calibrated(case: str):
    """(float model, calibrated model, program, calibration images, other images)."""
    torch.manual_seed(0)
    model = conftest.make_deit_distilled() if case == "w8a8-distilled" else conftest.make_vit()
    calib = conftest.images(8, 32, seed=1)
    other = conftest.images(8, 32, seed=2)
    qmodel = quantize_model(model, calib, qconfig_for(case)).model
    return model, qmodel, convert_vit(qmodel), calib, other
