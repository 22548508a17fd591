"""``run_compare`` end to end on the tiny ViT: one FP pass shared by every variant, each variant's numbers
identical to ``vitquant quantize`` on the same images, a variant failing at run time recorded while the
others go on, and the figure data of every successful variant."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import COMPARE_FAILING_BITS, COMPARE_SETTINGS, noise_folder, tiny_job_model

from vitquant import workflow
from vitquant.compare import CompareJob, plan_variants, run_compare, session
from vitquant.errors import ConfigError
from vitquant.workflow import QuantizeJob, run_quantize

pytestmark = pytest.mark.usefixtures("single_thread")

HEADS, TOKENS, HIDDEN = 3, 17, 192  # the tiny ViT: 3 heads, 16 patches + class token, MLP width 192


def _ok(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r["status"] == "ok"]


def test_rows_in_plan_order_with_one_fp_row(tiny_compare):
    results, folder = tiny_compare
    assert [r["variant"] for r in results["rows"]] == ["repq-vit W4A4", "bitlog2-half-17 W4A4",
                                                      f"repq-vit W{COMPARE_FAILING_BITS}A{COMPARE_FAILING_BITS}"]
    assert [r["status"] for r in results["rows"]] == ["ok", "ok", "failed"]
    assert results["calibration_images"] == 2 and results["evaluation_images"] == 6
    assert results["weights"] == "tiny random ViT" and results["skipped_images"] == []
    assert results["calib_dir"] == results["eval_dir"] == str(folder.resolve())
    assert set(results["fp"]) == {"top1", "top5", "images_per_second"}
    assert results["config"]["timing_batch"] == COMPARE_SETTINGS["timing_batch"] and "progress" not in results["config"]


@pytest.mark.parametrize("index", [0, 1])
def test_each_variant_equals_vitquant_quantize(tiny_compare, index, monkeypatch):
    """The same calibration and the same images: the very same numbers as the main job's report (the
    second variant also shows that the first left the shared FP model untouched)."""
    results, folder = tiny_compare
    row = results["rows"][index]
    monkeypatch.setattr(workflow, "create_model", tiny_job_model)
    job = QuantizeJob(recipe=row["recipe"], w_bits=row["w_bits"], a_bits=row["a_bits"], calib_data=folder,
                      calib_size=COMPARE_SETTINGS["calib_size"], batch_size=COMPARE_SETTINGS["batch_size"], progress=False)
    report = run_quantize(job)
    assert report["fp"]["images"] == report["quantized"]["images"] == results["evaluation_images"]
    assert (results["fp"]["top1"], results["fp"]["top5"]) == (report["fp"]["top1"], report["fp"]["top5"])
    assert (row["top1"], row["top5"]) == (report["quantized"]["top1"], report["quantized"]["top5"])
    assert row["agreement"] == report["fidelity"]["top1_agreement"]
    assert row["mean_kl"] == report["fidelity"]["mean_kl"] > 0
    assert row["qconfig"] == report["config"]["qconfig"]
    assert row["levels"]["post_softmax"] == report["levels"]["post_softmax"]
    assert 0 < row["agreement"] <= 100 and math.isfinite(row["relative_throughput"]) and row["relative_throughput"] > 0


def test_a_variant_failing_at_run_time_is_recorded(tiny_compare):
    results, _ = tiny_compare
    failed = results["rows"][2]
    assert failed == {"variant": "repq-vit W3A3", "label": "repq-vit", "recipe": "repq-vit", "w_bits": 3, "a_bits": 3,
                      "options": {}, "status": "failed", "error": "quantized logits: 6 of 6 rows contain NaN or inf values"}
    assert all("top1" in r for r in _ok(results))


def test_point_sqnr_of_every_point(tiny_compare):
    results, _ = tiny_compare
    for row in _ok(results):
        points = row["point_sqnr"]
        assert len(points) == 10 + 18  # every weight, then every activation point of the tiny ViT
        assert [p["role"] for p in points[:10]] == ["weight"] * 10
        assert all(p["sqnr_db"] is not None and math.isfinite(p["sqnr_db"]) for p in points)
        attention = [p for p in points if p["role"] == "post_softmax"]
        images = COMPARE_SETTINGS["figure_images"]
        assert [p["values"] for p in attention] == [images * HEADS * TOKENS * TOKENS] * 2


def _check_histogram(hist: dict, values: int) -> None:
    assert hist["values"] == values
    assert sum(hist["counts"]) + hist["below"] + hist["above"] == values
    assert len(hist["edges"]) == len(hist["counts"]) + 1


def test_figure_data_of_every_successful_variant(tiny_compare):
    results, _ = tiny_compare
    images = COMPARE_SETTINGS["figure_images"]
    expected = {"repq-vit W4A4": ("LogSqrt2Quantizer", 17), "bitlog2-half-17 W4A4": ("BitLog2Quantizer", 17)}
    for row in _ok(results):
        attention = row["figures"]["attention"]
        quantizer, max_levels = expected[row["variant"]]
        assert attention["point"] == "blocks.1.attn.av.a_quant"  # the middle one of two post-softmax points
        assert attention["quantizer"] == quantizer
        _check_histogram(attention["histogram"], images * HEADS * TOKENS * TOKENS)
        assert attention["histogram"]["above"] == 0  # probabilities
        grid = attention["grid"]
        assert grid["rows"] == HEADS and 1 <= grid["distinct"] <= HEADS
        assert 2 <= len(grid["values"]) <= max_levels
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in grid["values"]) and 0.0 in grid["values"]

        gelu = row["figures"]["post_gelu"]
        assert [g["point"] for g in gelu] == ["blocks.0.mlp.fc2.input_quant", "blocks.1.mlp.fc2.input_quant"]
        for panel in gelu:
            hist = panel["histogram"]
            _check_histogram(hist, images * TOKENS * HIDDEN)
            assert hist["edges"][0] == pytest.approx(-0.17, abs=0.01)  # GELU's minimum, about -0.17
            assert 2 <= len(panel["grid"]["values"]) <= 16 and panel["grid"]["rows"] == HIDDEN
            assert all(math.isfinite(v) for v in panel["grid"]["values"])
    assert "figures" not in results["rows"][2]


def _counting(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(session, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(session, name, counted)
    return calls


def test_model_and_images_are_loaded_once_and_the_attention_layer_is_chosen(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "create_model", tiny_job_model)
    models, decodes = _counting(monkeypatch, "create_model"), _counting(monkeypatch, "load_images")
    folder = noise_folder(tmp_path / "images", 6)
    job = CompareJob(calib_data=folder, attention_layer="blocks.0.attn", **COMPARE_SETTINGS)
    results = run_compare(job, plan_variants(["repq-vit", "bitlog2-half-17"], [(4, 4), (3, 3)]))
    assert len(results["rows"]) == 4 and {r["status"] for r in results["rows"]} == {"ok"}
    assert len(models) == 1 and len(decodes) == 1
    assert {r["figures"]["attention"]["point"] for r in results["rows"]} == {"blocks.0.attn.av.a_quant"}


def test_an_unknown_attention_layer_fails_before_any_calibration(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "create_model", tiny_job_model)
    job = CompareJob(calib_data=noise_folder(tmp_path / "images", 4), attention_layer="blocks.7.attn", **COMPARE_SETTINGS)
    monkeypatch.setattr(session, "quantize_model", lambda *_a, **_k: pytest.fail("calibrated before the check"))
    with pytest.raises(ConfigError, match="--attention-layer 'blocks.7.attn' is not a post-softmax point of this "
                                          "model; choose from blocks.0.attn.av.a_quant, blocks.1.attn.av.a_quant"):
        run_compare(job, plan_variants(["repq-vit"], [(4, 4)]))
