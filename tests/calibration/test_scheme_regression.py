"""The six attention schemes give the same quantized DeiT-Tiny as when the golden file was written.

Golden: ``golden/six_schemes_deit_tiny.json`` written by ``scheme_fingerprint.py`` (see there). The
comparison tolerates float noise only: parameters to a relative 1e-5, code histograms to 1 in 10^4 of
the elements, logits to 2e-3 absolute, and the same top-1 class for every image.
"""

from __future__ import annotations

import json

import pytest
import torch

from scheme_fingerprint import GOLDEN, SCHEMES, current_name, fingerprint, load_data
from vitquant.calibration import quantize_model
from vitquant.qconfig import repq_vit_qconfig

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def data():
    loaded = load_data()
    if loaded is None:
        pytest.skip("shared DeiT-Tiny weights or ImageNet sample not present")
    return loaded


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_gives_the_pinned_model(scheme, data, golden):
    model, calib_x, eval_x = data
    got = fingerprint(quantize_model(model, calib_x, repq_vit_qconfig(4, 4, scheme)), eval_x)
    want = golden[scheme]
    want = {**want, "points": {current_name(n): p for n, p in want["points"].items()}}
    assert sorted(got["points"]) == sorted(want["points"])
    for name, point in want["points"].items():
        mine = got["points"][name]
        assert sorted(mine["params"]) == sorted(point["params"]), name
        for key, values in point["params"].items():
            assert torch.allclose(
                torch.tensor(mine["params"][key], dtype=torch.float64),
                torch.tensor(values, dtype=torch.float64), rtol=1e-5, atol=1e-6,
            ), f"{name}.{key}: {mine['params'][key]} != {values}"
        if point["counts"] is None:
            assert mine["counts"] is None, name
            continue
        a, b = torch.tensor(mine["counts"]), torch.tensor(point["counts"])
        assert a.shape == b.shape, name
        assert int((a - b).abs().sum()) <= max(1, int(b.sum()) // 10_000), f"{name}: code histogram changed"
    assert got["argmax"] == want["argmax"]
    assert torch.allclose(torch.tensor(got["logits"]), torch.tensor(want["logits"]), atol=2e-3, rtol=0)
