"""Fingerprint of a quantized DeiT-Tiny, used to pin the six attention schemes across refactors.

``python tests/calibration/scheme_fingerprint.py`` (after set-up, with ../shared present) rewrites
``golden/six_schemes_deit_tiny.json``; do that only when a change is *meant* to alter the quantized
model, and say so in the commit. ``test_scheme_regression.py`` compares against the file.

A fingerprint holds, for every quantization point and weight quantizer, its fitted parameters (full
vectors for per-tensor parameters, sums for per-channel ones), the histogram of codes it used on the
calibration images, and logits of the first 16 evaluation images (first 50 classes, plus argmax).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "golden" / "six_schemes_deit_tiny.json"
SCHEMES = ("sqrt2-16", "sqrt2-17", "bitlog2-single-16", "bitlog2-single-17", "bitlog2-half-16", "bitlog2-half-17")
CALIB_IMAGES = 32
EVAL_IMAGES = 16
LOGIT_CLASSES = 50


def load_data():
    """(float DeiT-Tiny, 32 calibration images (seed 0), 16 evaluation images) or None without ../shared."""
    from vitquant.data import eval_transform, list_images, load_batch, split_calibration_eval
    from vitquant.models import create_model
    from vitquant.paths import default_sample_images, default_weights

    sample = default_sample_images()
    if sample is None or default_weights("deit_tiny_patch16_224") is None:
        return None
    model, _ = create_model("deit_tiny")
    records = list_images(sample)
    calib, evaluation = split_calibration_eval(records, records, CALIB_IMAGES, EVAL_IMAGES, seed=0)
    transform = eval_transform(model)
    return model, load_batch(calib, transform), load_batch(evaluation, transform)


def _params(quantizer) -> dict[str, list[float]]:
    """Named fitted parameters of a quantizer: full list when small, [sum, sum |.|, count] when large."""
    out = {}
    for name in ("scale", "zero_point", "delta", "divisor"):
        value = getattr(quantizer, name, None)
        if value is None:
            continue
        t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        out[name] = t.tolist() if t.numel() <= 4 else [float(t.sum()), float(t.abs().sum()), t.numel()]
    return out


# point names before the matmuls became QuantMatMul modules -> names now
RENAMED = {"attn.q_quant": "attn.qk.a_quant", "attn.k_quant": "attn.qk.b_quant",
           "attn.attn_quant": "attn.av.a_quant", "attn.v_quant": "attn.av.b_quant"}


def current_name(name: str) -> str:
    for old, new in RENAMED.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def fingerprint(result, eval_images: torch.Tensor) -> dict:
    """Parameters, level histograms and logits of a :class:`CalibrationResult`'s model."""
    from vitquant.calibration import fingerprint_points

    with torch.no_grad():
        logits = result.model(eval_images)
    return {
        "points": {name: {"params": _params(q), "counts": counts} for name, q, counts in fingerprint_points(result.model)},
        "argmax": logits.argmax(dim=1).tolist(),
        "logits": [[round(v, 5) for v in row] for row in logits[:, :LOGIT_CLASSES].tolist()],
    }


def assert_same_model(got: dict, want: dict) -> None:
    """Two fingerprints agree up to float noise: parameters to a relative 1e-5, code histograms to 1 in
    10^4 of the elements, logits to 2e-3 absolute, the same top-1 class for every image."""
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


def main() -> int:
    from vitquant.calibration import quantize_model
    from vitquant.qconfig import repq_vit_qconfig

    data = load_data()
    if data is None:
        print("shared DeiT-Tiny or sample images missing", file=sys.stderr)
        return 1
    model, calib_x, eval_x = data
    torch.set_num_threads(2)
    golden = {}
    for scheme in SCHEMES:
        result = quantize_model(model, calib_x, repq_vit_qconfig(4, 4, scheme))
        golden[scheme] = fingerprint(result, eval_x)
        print(scheme, "done", file=sys.stderr)
    GOLDEN.write_text(json.dumps(golden))
    return 0


if __name__ == "__main__":
    sys.exit(main())
