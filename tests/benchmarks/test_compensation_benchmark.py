"""The plumbing of ``benchmarks/compensation.py`` on the tiny ViT (its data loading replaced): one row per
stage, each on the tuning subset, the held-out rest and all images; rotation first when asked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The benchmark module with ``load_eval`` giving the tiny ViT, 4 calibration and 8 evaluation
    images, the first 3 of which are the tuning subset."""
    from conftest import images, make_vit

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_compensation", BENCHMARKS / "compensation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = make_vit()
    batches = [images(8, 32, seed=3)]
    with torch.no_grad():
        fp_logits = model(batches[0])
    data = SimpleNamespace(eval_dir=tmp_path, calib_dir=tmp_path, evaluation=[])

    def load_eval(args):
        return model, "tiny random ViT", data, images(4, 32, seed=1), batches, torch.arange(8) % 10, fp_logits

    monkeypatch.setattr(module, "load_eval", load_eval)
    monkeypatch.setattr(module, "tune_mask", lambda args, d: torch.arange(8) < 3)
    monkeypatch.setattr(module, "ReconstructionConfig", lambda seed: __import__(
        "vitquant.reconstruction", fromlist=["ReconstructionConfig"]).ReconstructionConfig(iters=2, batch_size=2, seed=seed))
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
                       "--rotate", "hadamard", "--tag", "t", "--out", str(out)]) == 0
    res = json.loads((out / "compensation_deit_tiny_t.json").read_text())
    assert [r["stage"] for r in res["rows"]] == [
        "-", "hadamard rotation + calibration", "+ reconstruction", "+ reconstruction + QwT"]
    assert res["rotation_construction"] == "hadamard"
    assert "residual stream rotated (hadamard) before calibration" in (out / "compensation_deit_tiny_t.md").read_text()
