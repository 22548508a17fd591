"""The plumbing of ``benchmarks/compensation.py`` on the tiny ViT (its data loading replaced): one row per
stage, each on the tuning subset, the held-out rest and all images; rotation first when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_bench import tiny_benchmark

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The benchmark module with ``load_eval`` giving the tiny ViT, 4 calibration and 8 evaluation
    images, the first 3 of which are the tuning subset."""
    module = tiny_benchmark("compensation", monkeypatch, tmp_path)
    monkeypatch.setattr(module, "tune_mask", lambda args, d: torch.arange(8) < 3)
    monkeypatch.setattr(module, "ReconstructionConfig", lambda **kw: __import__(
        "vitquant.reconstruction", fromlist=["ReconstructionConfig"]).ReconstructionConfig(iters=2, batch_size=2, **kw))
    return module


def test_calibration_then_qwt_rows_on_three_image_sets(bench, tmp_path):
    out = tmp_path / "out"
    assert bench.main(["--bits", "4", "--rows", "bitlog2-half-17", "--calib-size", "4", "--out", str(out)]) == 0
    res = json.loads((out / "compensation_deit_tiny.json").read_text())
    assert [r["stage"] for r in res["rows"]] == ["-", "calibration", "+ QwT"]
    assert (res["tune_images"], res["held_out_images"]) == (3, 5)
    for row in res["rows"]:
        assert [row[s]["images"] for s in ("tune", "held_out", "all")] == [3, 5, 8]
    qwt = res["rows"][2]
    assert [u["name"] for u in qwt["compensation"]["units"]] == ["blocks.0", "blocks.1"]
    assert qwt["seconds"]["compensation"] > 0 and res["rotation"] == "none"
    assert "| W4A4 | bitlog2-half-17 | + QwT |" in (out / "compensation_deit_tiny.md").read_text()


def test_rotation_and_reconstruction_before_qwt(bench, tmp_path):
    out = tmp_path / "out"
    assert bench.main(["--bits", "4", "--rows", "bitlog2-half-17", "--calib-size", "4", "--reconstruct",
                       "--rotate", "hadamard", "--recon-reg-weight", "5e-5", "--tag", "t", "--out", str(out)]) == 0
    res = json.loads((out / "compensation_deit_tiny_t.json").read_text())
    assert [r["stage"] for r in res["rows"]] == [
        "-", "hadamard rotation + calibration", "+ reconstruction", "+ reconstruction + QwT"]
    assert res["rotation_construction"] == "hadamard" and res["reconstruction_settings"]["reg_weight"] == 5e-5
    assert "residual stream rotated (hadamard) before calibration" in (out / "compensation_deit_tiny_t.md").read_text()
