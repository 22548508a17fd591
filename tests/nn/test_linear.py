"""QuantLinear / QuantConv2d: shared float parameters, exact float path, cached per-row weight fake-quant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitquant.nn import Mode, QuantConv2d, QuantLinear
from vitquant.quantizers import UniformQuantizer, UniformSpec


def _linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(12, 7, bias=bias)


def _conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 6, kernel_size=4, stride=4)


def _quant(layer: nn.Module, bits: int = 4):
    if isinstance(layer, nn.Linear):
        q = QuantLinear.from_float(layer, "linear_input")
    else:
        q = QuantConv2d.from_float(layer, "patch_embed_input")
    q.weight_spec = UniformSpec(bits=bits, granularity="channel")
    q.layer_name = "layer"
    return q


def _input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 12, generator=g) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 8, 8, generator=g)


LAYERS = {"linear": _linear, "linear_nobias": lambda: _linear(bias=False), "conv": _conv}


@pytest.mark.parametrize("kind", LAYERS)
def test_from_float_shares_parameters(kind):
    layer = LAYERS[kind]()
    q = _quant(layer)
    assert q.weight is layer.weight
    assert q.bias is layer.bias
    assert q.weight.device.type == "cpu"
    assert not any(p.is_meta for p in q.parameters())
    assert [n for n, _ in q.named_parameters()] == [n for n, _ in layer.named_parameters()]
    # an in-place edit of the original (e.g. reparameterization) is seen by the quantized layer
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.equal(q.weight, layer.weight)


def test_conv_from_float_keeps_geometry():
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1, dilation=1, groups=1, padding_mode="reflect")
    q = QuantConv2d.from_float(conv, "patch_embed_input")
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(q, attr) == getattr(conv, attr), attr
    assert q.input_quant.channel_dim == 1
    x = torch.randn(1, 3, 9, 9)
    assert torch.equal(q(x), conv(x))


@pytest.mark.parametrize("kind", LAYERS)
def test_float_forward_is_exact(kind):
    layer = LAYERS[kind]()
    q = _quant(layer)
    x = _input(layer)
    assert q.mode is Mode.FLOAT
    with torch.no_grad():
        assert torch.equal(q(x), layer(x))
    # quantizing the weight does not change the FLOAT path
    q.quantize_weight()
    with torch.no_grad():
        assert torch.equal(q(x), layer(x))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", LAYERS)
def test_cached_weight_has_at_most_2_pow_b_values_per_output_row(kind, bits):
    layer = LAYERS[kind]()
    q = _quant(layer, bits)
    q.quantize_weight()
    wfq = q.weight_fq
    assert wfq.shape == q.weight.shape and wfq.dtype == q.weight.dtype
    rows = wfq.reshape(wfq.shape[0], -1)
    for row in rows:
        assert len(torch.unique(row)) <= 2**bits
    # per output channel: the quantizer has one (scale, zero) per row
    assert q.weight_quantizer.scale.numel() == wfq.shape[0]
    err = (wfq - q.weight).abs().max() / q.weight.abs().max()
    assert err < {2: 0.7, 4: 0.1, 8: 0.01}[bits]
    assert not torch.equal(wfq, q.weight)


@pytest.mark.parametrize("kind", LAYERS)
def test_quantize_mode_uses_the_cached_weight(kind):
    layer = LAYERS[kind]()
    q = _quant(layer)
    q.quantize_weight()
    wfq = q.weight_fq.clone()
    x = _input(layer)
    q.mode = Mode.QUANTIZE  # input point stays FLOAT: only the weight is quantized
    with torch.no_grad():
        out = q(x)
        if isinstance(layer, nn.Linear):
            ref = F.linear(x, wfq, layer.bias)
        else:
            ref = F.conv2d(x, wfq, layer.bias, stride=layer.stride)
    assert torch.equal(out, ref)
    # editing the float weight afterwards does not change the output: no recomputation per forward
    with torch.no_grad():
        q.weight.add_(1.0)
        assert torch.equal(q(x), out)
    # until quantize_weight is called again
    q.quantize_weight()
    with torch.no_grad():
        assert not torch.equal(q(x), out)


@pytest.mark.parametrize("kind", LAYERS)
def test_quantize_mode_without_quantized_weight_raises(kind):
    q = _quant(LAYERS[kind]())
    q.mode = Mode.QUANTIZE
    with pytest.raises(RuntimeError, match="not quantized"):
        q(_input(q))


def test_quantize_weight_without_spec_raises():
    q = QuantLinear.from_float(_linear(), "linear_input")
    q.layer_name = "blocks.0.fc"
    with pytest.raises(RuntimeError, match="blocks.0.fc"):
        q.quantize_weight()


def test_weight_fq_is_a_buffer_in_the_state_dict():
    q = _quant(_linear())
    q.quantize_weight()
    state = q.state_dict()
    assert "weight_fq" in state and torch.equal(state["weight_fq"], q.weight_fq)
    assert "input_quant.observed_min" not in state  # None buffers are not saved


@pytest.mark.parametrize("kind", LAYERS)
def test_input_points_and_consume(kind):
    """The calibration pipeline's view of a layer: its one input point, and the layer on a given input."""
    layer = LAYERS[kind]()
    q = _quant(layer)
    assert q.input_points() == [q.input_quant]
    q.quantize_weight()
    x = _input(layer)
    q.mode = Mode.QUANTIZE
    q.input_quant.set_quantizer(UniformQuantizer(4, torch.tensor(0.25), torch.tensor(8.0)))
    q.input_quant.mode = Mode.QUANTIZE
    with torch.no_grad():
        xq = q.input_quant(x)
        assert not torch.equal(xq, x)
        # consume skips the input point (its operand is already quantized) and uses the cached weight
        assert torch.equal(q.consume([xq]), q(x))
        q.mode = Mode.FLOAT
        assert torch.equal(q.consume([x]), layer(x))
