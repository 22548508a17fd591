"""Checks shared by the kernel tests (imported by test modules; pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

from vitquant.kernels.arith import FLOAT, INT, check_exact


def run_both(kernel, x, scale, *affine):
    """The kernel on both backends: equal bit for bit, finite, positive scales, below 2^52."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    yi, si = kernel(INT.tensor(x), scale, INT, *affine)
    yf, sf = kernel(FLOAT.tensor(x), scale, FLOAT, *affine)
    assert yi.dtype == torch.int64 and yf.dtype == torch.float64
    assert torch.equal(yi.to(torch.float64), yf)
    assert si.dtype == torch.float64 and torch.equal(si, sf)
    assert torch.isfinite(yf).all() and torch.isfinite(si).all() and (si > 0).all()
    check_exact(yi, kernel.name)
    return yi, si


def realistic_logits(gen, rows, n, sigma, bits):
    """Attention-like logits N(0, sigma²) quantized symmetrically to ``bits``: (integers, scale)."""
    logits = torch.randn(rows, n, generator=gen, dtype=torch.float64) * sigma
    scale = logits.abs().max().item() / (2 ** (bits - 1) - 1)
    return torch.round(logits / scale), scale
