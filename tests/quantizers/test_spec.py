"""The spec registry: every format by kind, options as data, granularity honoured by every kind."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import ConfigError, NumericalError
from vitquant.quantizers import GRANULARITIES, make_spec, spec_kinds
from vitquant.quantizers.spec import spec_from_dict

KINDS = {
    "uniform": {},
    "log_sqrt2": {"variant": 17},
    "bitlog2": {"variant": 17, "half": True},
    "adalog": {},
    "twin_uniform": {"mode": "softmax"},
}


def test_every_format_is_registered():
    assert set(KINDS) <= set(spec_kinds())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_to_dict_round_trips(kind):
    spec = make_spec(kind, bits=3, granularity="head", search="fpcs", metric="cosine", **KINDS[kind])
    d = spec.to_dict()
    assert d["kind"] == kind and d["max_levels"] == spec.max_levels and d["search"] == "fpcs"
    assert spec_from_dict(d) == spec
    assert spec_from_dict(make_spec(kind, bits=4, **KINDS[kind]).to_dict()) == make_spec(kind, bits=4, **KINDS[kind])


@pytest.mark.parametrize(
    "kind, options, match",
    [
        ("nope", {}, "unknown quantizer kind"),
        ("uniform", {"variant": 17}, "no option"),
        ("uniform", {"granularity": "row"}, "granularity"),
        ("uniform", {"search": "random"}, "unknown search"),
        ("uniform", {"metric": "l1"}, "unknown metric"),
        ("uniform", {"bits": 9}, "between 2 and 8"),
        ("log_sqrt2", {"variant": 18}, "variant"),
        ("bitlog2", {"bits": 6, "half": False}, "int64"),
    ],
)
def test_bad_specs_are_refused(kind, options, match):
    with pytest.raises(ConfigError, match=match):
        make_spec(kind, **{"bits": 4, **options})


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_granularity_gives_one_parameter_set_per_row(kind, granularity):
    """Attention-like data [B, H, N, N]: per head (axis 1) or per channel (last axis)."""
    x = torch.softmax(torch.randn(2, 3, 8, 8) * torch.tensor([0.5, 2.0, 6.0]).reshape(1, 3, 1, 1), dim=-1)
    spec = make_spec(kind, bits=4, granularity=granularity, **KINDS[kind])
    axis = {"tensor": None, "channel": -1, "head": 1}[granularity]
    q = spec.fit(x, axis=axis)
    y = q(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if axis is None:
        assert y.unique().numel() <= spec.max_levels
        return
    # each row is quantized exactly as if it had been fitted alone
    for r in range(x.shape[axis]):
        row = x.select(axis, r).unsqueeze(axis)
        alone = make_spec(kind, bits=4, **KINDS[kind]).fit(row)
        assert torch.equal(y.select(axis, r), alone(row).squeeze(axis)), r
        assert y.select(axis, r).unique().numel() <= spec.max_levels
    assert int(q.codes(x).max()) < spec.max_levels


@pytest.mark.parametrize("kind", ["log_sqrt2", "bitlog2", "adalog"])
def test_log_formats_refuse_negative_input(kind):
    with pytest.raises(NumericalError):
        make_spec(kind, bits=4, **KINDS[kind]).fit(torch.tensor([0.5, -0.1, 0.2]), where="blocks.0.x")
