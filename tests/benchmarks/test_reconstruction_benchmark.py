"""The plumbing of ``benchmarks/reconstruction.py`` on the tiny ViT (its data loading replaced): every row
with the integer kernels of ``--nonlinear``, the QAT row training with them in the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_bench import tiny_benchmark
from vitquant.reconstruction import ReconstructionConfig

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The benchmark module with ``load_eval`` giving the tiny ViT, 4 calibration and 8 evaluation
    images, and ``training_images`` 8 labelled tensors."""
    from conftest import images
    from vitquant.qat import TensorImages

    module = tiny_benchmark("reconstruction", monkeypatch, tmp_path)
    monkeypatch.setattr(module, "training_images", lambda args, d, m: TensorImages(images(8, 32, seed=2), torch.arange(8) % 10))
    return module


def test_nonlinear_rows_and_an_integer_only_qat_row(bench, tmp_path):
    out = tmp_path / "out"
    rc = bench.main(["--bits", "4", "--calib-size", "4", "--recon-iters", "2", "--recon-batch-size", "2",
                     "--qat-steps", "2", "--qat-batch-size", "4", "--nonlinear", "ivit", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "reconstruction_deit_tiny.json").read_text())
    assert res["nonlinear"] == "ivit" and res["qat_settings"]["kernels"] == "ste"
    rows = res["rows"]
    assert [r["row"].split(" + ")[-1] for r in rows[1:]] == [rows[1]["row"], "reconstruction", "QAT"]
    for row in rows[1:]:  # every quantized row: I-ViT kernels and integer residual adds
        nonlinear = row["qconfig"]["nonlinear"]
        assert set(nonlinear["ops"].values()) == {"ivit", "integer"}
    assert [b["name"] for b in rows[2]["reconstruction"]["blocks"]] == ["patch_embed", "blocks.0", "blocks.1", "head"]
    assert rows[3]["training"]["steps"] == 2 and rows[3]["training"]["settings"]["kernels"] == "ste"
    markdown = (out / "reconstruction_deit_tiny.md").read_text()
    assert "integer non-linear kernels `ivit`" in markdown and "QAT with the kernels in the loop" in markdown
    assert "patch embedding and head included), evaluated on 8 other images" in markdown


def test_float_is_the_default_and_the_ends_can_be_left_out(bench, tmp_path):
    args = ["--bits", "4", "--rows", "repq-vit", "--calib-size", "4", "--recon-iters", "1", "--recon-batch-size", "2",
            "--no-recon-ends", "--recon-act-lr", "1e-3", "--recon-loss", "fisher", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    res = json.loads((tmp_path / "reconstruction_deit_tiny.json").read_text())
    assert res["settings"]["act_lr"] == 1e-3 and res["settings"]["weight_lr"] == ReconstructionConfig.weight_lr
    assert res["settings"]["ends"] is False and len(res["rows"][2]["reconstruction"]["blocks"]) == 2
    assert res["settings"]["loss"] == "fisher"
    header = (tmp_path / "reconstruction_deit_tiny.md").read_text()
    assert "blocks only" in header and "lr 0.01 / activation steps 0.001" in header and "Fisher-weighted error" in header
    assert res["nonlinear"] == "float" and res["qat_settings"] is None and len(res["rows"]) == 3
    assert bench.nonlinear_config("mixed:output-sqnr", 4, None).rule == "output-sqnr"
    assert bench.nonlinear_config("float", 4, None) is None


def test_qat_only_rows_with_the_ends_at_8_bits_under_another_name(bench, tmp_path):
    """``--recon-iters 0``: no reconstruction row; a row's ``ends_bits=8`` reaches the QConfig as a number."""
    args = ["--bits", "3", "--rows", "bitlog2-single-17+ends_bits=8", "--calib-size", "4", "--recon-iters", "0",
            "--qat-steps", "1", "--qat-batch-size", "4", "--stem", "qat_only", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    res = json.loads((tmp_path / "qat_only.json").read_text())
    assert [r["row"] for r in res["rows"]] == ["FP32", "bitlog2-single-17+ends_bits=8", "bitlog2-single-17+ends_bits=8 + QAT"]
    assert res["settings"] is None and res["reconstruction_images"] is None
    roles = res["rows"][1]["qconfig"]["roles"]
    assert roles["head_weight"]["bits"] == 8 and roles["weight"]["bits"] == 3
    assert "no reconstruction, evaluated on 8 other images" in (tmp_path / "qat_only.md").read_text()
