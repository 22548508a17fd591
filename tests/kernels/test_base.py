"""Prepared kernels: ``prepare(scale)`` then ``apply`` gives the kernel's integers; the declared output bound
holds at the extremes of the accepted inputs; ``check`` refuses what ``apply`` does not accept."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.kernels import FAMILIES, kernel_choices, make_kernel
from vitquant.kernels.arith import FLOAT, INT

pytestmark = pytest.mark.usefixtures("single_thread")

LIMIT = 2**16  # every family accepts |x| < 2^16 (softmax: |x| < 2^40 before its reduction)
SCALE = torch.tensor(0.02, dtype=torch.float64)
GEN = torch.Generator().manual_seed(0)


def _inputs(op: str) -> torch.Tensor:
    """Random integers with the extremes planted: rows of softmax logits up to 2^40, else |x| < 2^16."""
    top = 2**40 - 1 if op == "softmax" else LIMIT - 1
    x = torch.randint(-1000, 1000, (6, 24), generator=GEN, dtype=torch.int64)
    x[0, :2], x[1, :2], x[2] = torch.tensor([-top, top]), torch.tensor([top, top]), -top
    return x


def _prepare(family: str, op: str, arith, channels: int = 24):
    kernel = make_kernel(family, op)
    if op == "layernorm":
        weight, bias = torch.linspace(-2, 3, channels), torch.linspace(-1, 1, channels)
        scale = SCALE.expand(channels) if kernel.input_format == "ptf" else SCALE
        return kernel, kernel.prepare(scale, arith, weight, bias, channels), (scale, arith, weight, bias)
    return kernel, kernel.prepare(SCALE, arith), (SCALE, arith)


CASES = [(family, op) for op in ("softmax", "gelu", "layernorm") for family in kernel_choices(op)]


@pytest.mark.parametrize("family, op", CASES)
def test_prepared_kernel_is_the_kernel(family, op):
    """apply (no checks) = the kernel's call, in both backends, and |output| <= the declared bound."""
    x = _inputs(op)
    for arith in (INT, FLOAT):
        kernel, prepared, args = _prepare(family, op, arith)
        expected, scale = kernel(arith.tensor(x), *args)
        got = prepared.apply(arith.tensor(x))
        assert torch.equal(got, expected) and torch.equal(prepared.scale, scale)
        assert expected.abs().max().item() <= prepared.bound, (family, op)


@pytest.mark.parametrize("family, op", CASES)
def test_check_refuses_inputs_beyond_the_limit(family, op):
    _, prepared, _ = _prepare(family, op, INT)
    x = _inputs(op)
    prepared.check(x)
    x[3, 5] = prepared.input_limit
    with pytest.raises(ConfigError, match=f"2\\^{prepared.input_limit.bit_length() - 1}"):
        prepared.check(x)
    with pytest.raises(ConfigError, match=f"2\\^{prepared.input_limit.bit_length() - 1}"):
        prepared(x)


@pytest.mark.parametrize("family", FAMILIES)
def test_layernorm_is_prepared_for_its_channels(family):
    _, prepared, _ = _prepare(family, "layernorm", INT)
    with pytest.raises(ConfigError, match="24 channels"):
        prepared(torch.zeros(2, 23, dtype=torch.int64))


def test_per_head_softmax_needs_its_heads():
    kernel = make_kernel("ibert", "softmax")
    prepared = kernel.prepare(torch.tensor([1e-3, 2e-3, 4e-3], dtype=torch.float64), INT)
    prepared.check(torch.zeros(2, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="3 per-head scales"):
        prepared.check(torch.zeros(2, 4, 4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="one input scale"):
        prepared.check(torch.zeros(4, 4, dtype=torch.int64))
