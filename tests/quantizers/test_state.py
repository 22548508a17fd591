"""Quantizer state: every class round-trips through plain data (JSON meta + tensors) to an equal quantizer,
and ``quantizer_from_state`` rejects malformed states with a clear ConfigError."""

from __future__ import annotations

import json
import math

import pytest
import torch
from quantizer_cases import CASE_IDS, CASES, probabilities

from vitquant.errors import ConfigError
from vitquant.quantizers import (
    BitLog2Quantizer,
    BitLog2Scheme,
    Quantizer,
    QuantizerState,
    UniformQuantizer,
    make_spec,
    quantizer_from_state,
    quantizer_kinds,
    register_quantizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = ["adalog", "bitlog2", "fixed_point", "log_sqrt2", "twin_gelu", "twin_softmax", "uniform"]


def _same_quantizer(a: Quantizer, b: Quantizer, x: torch.Tensor) -> None:
    assert type(a) is type(b)
    assert a.max_levels == b.max_levels and a.extra_repr() == b.extra_repr()
    assert torch.equal(a(x).view(torch.int32), b(x).view(torch.int32))  # bit for bit, sign of zero too
    assert torch.equal(a.codes(x), b.codes(x))
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name, buf in buffers_a.items():  # derived tables too (AdaLog's level table has a NaN slot)
        torch.testing.assert_close(buffers_b[name], buf, rtol=0, atol=0, equal_nan=True, msg=name)


def _via_json(state: QuantizerState) -> QuantizerState:
    """What a file would hold: meta through JSON text, tensors as fresh copies."""
    meta = json.loads(json.dumps(state.meta))
    return QuantizerState(json.loads(json.dumps(state.kind)), meta, {k: v.clone() for k, v in state.tensors.items()})


def test_registry_lists_every_kind():
    assert quantizer_kinds() == KINDS
    assert {type(q).kind for _, q, _ in CASES} == set(KINDS)


@pytest.mark.parametrize(("name", "quantizer", "x"), CASES, ids=CASE_IDS)
def test_round_trip_rebuilds_an_equal_quantizer(name, quantizer, x):
    state = quantizer.state()
    assert state.kind == type(quantizer).kind
    assert json.loads(json.dumps(state.meta)) == state.meta
    assert set(state.tensors) == set(type(quantizer).tensor_dtypes)
    for key, t in state.tensors.items():
        assert t.dtype == type(quantizer).tensor_dtypes[key]
    rebuilt = quantizer_from_state(_via_json(state))
    _same_quantizer(quantizer, rebuilt, x)
    assert rebuilt.state().meta == state.meta


def test_state_does_not_alias_the_buffers():
    q = UniformQuantizer(4, torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0]))
    state = q.state()
    state.tensors["scale"].mul_(3)
    state.tensors["zero_point"].add_(5)
    assert q.scale.tolist() == pytest.approx([0.1, 0.2]) and q.zero_point.tolist() == [1.0, 2.0]


def _fit_data(kind: str) -> torch.Tensor:
    """Calibration-like data ``[B, 3, 8, 8]``: attention-like probabilities, or signed activations."""
    gen = torch.Generator().manual_seed(3)
    if kind in ("bitlog2", "log_sqrt2", "adalog", "twin_uniform-softmax"):
        return torch.softmax(torch.randn(16, 3, 8, 8, generator=gen) * 3, dim=-1)
    x = torch.randn(16, 3, 8, 8, generator=gen) * torch.tensor([0.1, 1.0, 9.0]).reshape(3, 1, 1)
    return torch.nn.functional.gelu(x) if kind == "twin_uniform-gelu" else x


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("uniform", {"granularity": "channel"}),
        ("ptf", {}),
        ("bitlog2", {"variant": 16, "half": False, "granularity": "head"}),
        ("log_sqrt2", {"variant": 16}),
        ("adalog", {"granularity": "head"}),
        ("twin_uniform", {"mode": "softmax", "granularity": "head"}),
        ("twin_uniform", {"mode": "gelu", "granularity": "channel"}),
    ],
)
def test_round_trip_of_fitted_quantizers(kind, options):
    x = _fit_data(kind + (f"-{options['mode']}" if "mode" in options else ""))
    fitted = make_spec(kind, bits=4, **options).fit(x, axis=1)
    _same_quantizer(fitted, quantizer_from_state(_via_json(fitted.state())), x)


# --------------------------------------------------------------------------- validation


def _state(kind: str = "uniform", meta: object = None, tensors: object = None) -> QuantizerState:
    base = UniformQuantizer(4, torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0])).state()
    return QuantizerState(kind, base.meta if meta is None else meta, base.tensors if tensors is None else tensors)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown quantizer kind 'uniformm'; known: adalog, bitlog2, .*uniform"):
        quantizer_from_state(_state("uniformm"))
    with pytest.raises(ConfigError, match="unknown quantizer kind"):
        quantizer_from_state(_state(["uniform"]))  # type: ignore[arg-type]  # unhashable
    with pytest.raises(ConfigError, match="expected a QuantizerState, got dict"):
        quantizer_from_state({"kind": "uniform", "meta": {"bits": 4}, "tensors": {}})  # type: ignore[arg-type]


GOOD_UNIFORM = {"scale": torch.tensor([0.1, 0.2]), "zero_point": torch.tensor([1, 2])}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, r"missing \['bits'\], unexpected \[\]; expected \['bits'\]"),
        ({"bits": 4, "mode": "x"}, r"unexpected \['mode'\]"),
        ({"bits": 17}, "bit width must be between 2 and 16, got 17"),
        ({"bits": True}, "'bits' must be int, got True"),
        ({"bits": 4.0}, "'bits' must be int, got 4.0"),
        ({"bits": "4"}, "'bits' must be int, got '4'"),
        ([("bits", 4)], "meta must be a dict, got list"),
    ],
)
def test_bad_meta(meta, message):
    with pytest.raises(ConfigError, match=message):
        quantizer_from_state(_state(meta=meta))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"bits": 4, "half": True, "variant": 18}, "variant must be 16 or 17, got 18"),
        ({"bits": 4, "half": 1, "variant": 17}, "'half' must be bool, got 1"),
        ({"bits": 6, "half": False, "variant": 17}, "beyond int64"),
        ({"bits": 4, "variant": 17}, r"missing \['half'\]"),
    ],
)
def test_bad_bitlog2_meta(meta, message):
    with pytest.raises(ConfigError, match=message):
        quantizer_from_state(QuantizerState("bitlog2", meta, {"divisor": torch.tensor(3)}))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"scale": GOOD_UNIFORM["scale"]}, r"missing \['zero_point'\]"),
        ({**GOOD_UNIFORM, "inv_scale": torch.tensor(1.0)}, r"unexpected \['inv_scale'\]"),
        ({**GOOD_UNIFORM, "scale": torch.tensor([0.1, 0.2], dtype=torch.float64)}, "'scale' must be torch.float32"),
        ({**GOOD_UNIFORM, "zero_point": torch.tensor([1.0, 2.0])}, "'zero_point' must be torch.int64, got .*float32"),
        ({**GOOD_UNIFORM, "scale": [0.1, 0.2]}, "'scale' must be a torch.Tensor, got list"),
        ({**GOOD_UNIFORM, "scale": torch.tensor([0.1, math.nan])}, "'scale' has NaN or inf"),
        ({**GOOD_UNIFORM, "scale": torch.tensor([0.1, math.inf])}, "'scale' has NaN or inf"),
        ({**GOOD_UNIFORM, "scale": torch.tensor([0.1, -0.2])}, "invalid uniform quantizer state: .*> 0"),
        ({**GOOD_UNIFORM, "scale": torch.tensor([0.0, 0.2])}, "scale must be finite and > 0"),
        ({**GOOD_UNIFORM, "scale": torch.zeros(0)}, "'scale' is empty"),
        ({**GOOD_UNIFORM, "scale": torch.full((3,), 0.1)}, "do not broadcast together"),
        ("scale", "tensors must be a dict, got str"),
    ],
)
def test_bad_uniform_tensors(tensors, message):
    with pytest.raises(ConfigError, match=message):
        quantizer_from_state(_state(tensors=tensors))


@pytest.mark.parametrize(
    ("kind", "meta", "tensors", "message"),
    [
        ("bitlog2", {"bits": 4, "half": True, "variant": 17}, {"divisor": torch.tensor(0)}, "positive integer"),
        ("log_sqrt2", {"bits": 4, "variant": 15}, {"delta": torch.tensor(1.0)}, "variant must be 16 or 17"),
        ("log_sqrt2", {"bits": 4, "variant": 17}, {"delta": torch.tensor(-1.0)}, "delta must be finite and > 0"),
        ("adalog", {"bits": 4}, {"scale": torch.tensor(1.0), "q": torch.tensor(0)}, r"q must be an integer in \[1"),
        ("adalog", {"bits": 4}, {"scale": torch.tensor(1.0), "q": torch.tensor(37.0)}, "'q' must be torch.int64"),
        ("twin_softmax", {"bits": 4}, {"m": torch.tensor(101)}, r"m must be an integer in \[0, 100\]"),
        ("twin_softmax", {"bits": 4}, {"m": torch.tensor(-1)}, r"m must be an integer in \[0, 100\]"),
        ("twin_gelu", {"bits": 4}, {"scale": torch.tensor(0.0)}, "positive step must be finite and > 0"),
        ("twin_gelu", {"bits": 4, "mode": "gelu"}, {"scale": torch.tensor(0.1)}, r"unexpected \['mode'\]"),
    ],
)
def test_bad_values_use_the_constructors_checks(kind, meta, tensors, message):
    with pytest.raises(ConfigError, match=f"{kind} .*{message}"):
        quantizer_from_state(QuantizerState(kind, meta, tensors))


def test_data_is_never_called():
    calls = []

    def sneaky() -> int:
        calls.append(1)
        return 4

    with pytest.raises(ConfigError, match="'bits' must be int"):
        quantizer_from_state(_state(meta={"bits": sneaky}))
    with pytest.raises(ConfigError, match="unknown quantizer kind 'os.system'"):
        quantizer_from_state(_state("os.system"))
    assert calls == []


def test_register_quantizer_rejects_a_second_class_for_a_kind():
    class Impostor(BitLog2Quantizer):
        kind = "uniform"

    with pytest.raises(TypeError, match="already registered by UniformQuantizer"):
        register_quantizer(Impostor)
    assert register_quantizer(UniformQuantizer) is UniformQuantizer  # re-registering itself is harmless
    with pytest.raises(TypeError, match="has no kind"):
        register_quantizer(type("Nameless", (BitLog2Quantizer,), {"kind": ""}))
    assert quantizer_from_state(UniformQuantizer(4, 0.1, 0).state()).__class__ is UniformQuantizer


def test_bitlog2_large_divisor_round_trips_exactly():
    scheme = BitLog2Scheme(True, 16, 6)  # int_max 2^32: the divisor is a float32 integer above 2^24
    q = BitLog2Quantizer(scheme, torch.tensor([3.0, 16777213.0 * 128]))
    state = q.state()
    assert state.tensors["divisor"].tolist() == [3, 16777213 * 128]
    x = probabilities(3_000).unsqueeze(1).expand(-1, 2)
    _same_quantizer(q, quantizer_from_state(_via_json(state)), x.contiguous())
