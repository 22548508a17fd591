"""Quantizer state summaries: every kind summarises from its state alone, with the state's meta and
its tensors' values (one number, or shape/min/max/mean), as valid JSON (no NaN/inf)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from quantizer_cases import CASE_IDS, CASES

from vitquant.quantizers import (
    QuantizerState,
    UniformQuantizer,
    make_spec,
    quantizer_from_state,
    quantizer_kinds,
    spec_kinds,
    summarize_state,
)
from vitquant.quantizers.summary import summarize_number, summarize_tensor, tensor_stats
from vitquant.quantizers.trainable import AdaRoundWeight, LSQActivation

pytestmark = pytest.mark.usefixtures("single_thread")


def _check_summary(summary: dict, state: QuantizerState) -> None:
    """The summary names the state's kind and meta, and holds each tensor's values (6 significant digits:
    within a relative 5e-6)."""
    json.dumps(summary, allow_nan=False)  # valid JSON
    assert summary["kind"] == state.kind and summary["meta"] == state.meta
    assert summary["tensors"].keys() == state.tensors.keys()
    for name, t in state.tensors.items():
        got = summary["tensors"][name]
        integer = not t.is_floating_point()
        if t.numel() == 1:
            assert got == pytest.approx(t.item(), rel=5e-6), name
            assert isinstance(got, int) == integer, name
            continue
        assert got["shape"] == list(t.shape), name
        for key, want in (("min", t.min()), ("max", t.max()), ("mean", t.double().mean())):
            assert got[key] == pytest.approx(float(want), rel=5e-6), f"{name}.{key}"
        assert isinstance(got["min"], int) == integer and isinstance(got["max"], int) == integer, name


def test_every_kind_has_a_case():
    assert {type(q).kind for _, q, _ in CASES} == set(quantizer_kinds())


@pytest.mark.parametrize(("name", "quantizer", "x"), CASES, ids=CASE_IDS)
def test_summary_holds_the_state(name, quantizer, x):
    state = quantizer.state()
    summary = summarize_state(state)
    _check_summary(summary, state)
    assert summarize_state(quantizer_from_state(state).state()) == summary  # the rebuilt quantizer: the same


def _fit_data(signed: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    if not signed:
        return torch.softmax(torch.randn(8, 3, 8, 8, generator=gen) * 3, dim=-1)
    return torch.randn(8, 3, 8, 8, generator=gen) * torch.tensor([0.1, 1.0, 9.0]).reshape(3, 1, 1)


SPEC_CASES = [  # every spec kind, fitted per tensor or per channel/head
    ("uniform", {"granularity": "channel"}, True),
    ("ptf", {}, True),
    ("bitlog2", {"variant": 16, "half": False, "granularity": "head"}, False),
    ("log_sqrt2", {"variant": 17}, False),
    ("adalog", {"granularity": "head"}, False),
    ("twin_uniform", {"mode": "softmax", "granularity": "head"}, False),
    ("twin_uniform", {"mode": "gelu"}, True),
    ("fixed_point", {"bits": 24}, True),
    ("kernel_input", {"bits": 16}, True),
]


def test_every_spec_kind_is_fitted_below():
    assert {kind for kind, _, _ in SPEC_CASES} == set(spec_kinds())


@pytest.mark.parametrize(("kind", "options", "signed"), SPEC_CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SPEC_CASES)])
def test_fitted_quantizers_summarise(kind, options, signed):
    options = {"bits": 4, **options}
    fitted = make_spec(kind, **options).fit(_fit_data(signed), axis=1)
    _check_summary(summarize_state(fitted.state()), fitted.state())


def test_floats_keep_six_significant_digits_and_ints_stay_ints():
    state = QuantizerState("uniform", {"bits": 4}, {"scale": torch.tensor(0.123456789),
                                                    "zero_point": torch.tensor([3, 9, 9])})
    assert summarize_state(state) == {
        "kind": "uniform", "meta": {"bits": 4},
        "tensors": {"scale": 0.123457, "zero_point": {"shape": [3], "min": 3, "max": 9, "mean": 7.0}},
    }
    assert summarize_number(2.0e-9 / 3) == 6.66667e-10 and summarize_number(7) == 7 and summarize_number(True) is True


def test_non_finite_values_become_none():
    assert summarize_tensor(torch.tensor(math.inf)) is None
    stats = tensor_stats(torch.tensor([1.0, math.nan]))
    assert stats == {"shape": [2], "min": None, "max": None, "mean": None}
    assert tensor_stats(torch.tensor([1.0, math.inf]))["min"] == 1.0
    assert tensor_stats(torch.zeros(0, 3)) == {"shape": [0, 3], "min": None, "max": None, "mean": None}
    summary = summarize_state(QuantizerState("fixed_point", {"bits": 24}, {"scale": torch.tensor([-math.inf, 2.0])}))
    json.dumps(summary, allow_nan=False)
    assert summary["tensors"]["scale"] == {"shape": [2], "min": None, "max": 2.0, "mean": None}


def test_trained_quantizers_summarise_their_learned_values():
    """LSQ and AdaRound train stand-ins; what they harden to summarises like any fitted quantizer."""
    lsq = LSQActivation(UniformQuantizer(4, torch.tensor([0.1, 0.2]), torch.tensor([3.0, 5.0])))
    with torch.no_grad():
        lsq.scale.mul_(1.5)  # a learned step
    tensors = summarize_state(lsq.harden().state())["tensors"]
    assert tensors["scale"]["max"] == pytest.approx(0.3) and tensors["zero_point"]["min"] == 3
    weight_quantizer = UniformQuantizer(4, torch.tensor([[0.1], [0.2]]), torch.tensor([[3.0], [5.0]]))
    _, hardened = AdaRoundWeight(weight_quantizer, torch.randn(2, 6, generator=torch.Generator().manual_seed(0))).harden()
    assert summarize_state(hardened.state())["tensors"]["scale"] == {"shape": [2, 1], "min": 0.1, "max": 0.2, "mean": 0.15}
