"""The main job on a tiny random ViT: undecodable images under --on-bad-image error and skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import noise_folder, tiny_job_model
from vitquant import workflow
from vitquant.errors import ConfigError, DataError
from vitquant.workflow import QuantizeJob, run_quantize


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch):
    monkeypatch.setattr(workflow, "create_model", tiny_job_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _job(folder: Path, **kwargs) -> QuantizeJob:
    return QuantizeJob(recipe="repq-vit", calib_data=folder, calib_size=2, batch_size=3, progress=False, **kwargs)


def _bad_in_calibration_and_evaluation(folder: Path) -> tuple[set[str], set[str]]:
    """Which of the folder's junk files the seed-0 draw puts in calibration and which in evaluation."""
    data = workflow.resolve_data(_job(folder))
    junk = {p.name for p in folder.glob("*.JPEG")}
    calib = {r.path.name for r in data.calibration} & junk
    return calib, junk - calib


def test_a_bad_image_is_an_error_by_default(tmp_path):
    folder = noise_folder(tmp_path / "images", 9, bad=(4,))
    with pytest.raises(DataError, match=r"cannot decode image .*img04\.JPEG"):
        run_quantize(_job(folder))


def test_skip_names_the_bad_images_and_both_models_see_the_rest(tmp_path):
    folder = noise_folder(tmp_path / "images", 12, bad=(1, 6, 9))
    calib_bad, eval_bad = _bad_in_calibration_and_evaluation(folder)
    assert calib_bad and eval_bad  # the draw puts junk in both sets: both are tested
    report = run_quantize(_job(folder, on_bad_image="skip"))
    skipped = report["skipped_images"]
    assert {Path(p).name for p in skipped["calibration"]} == calib_bad
    assert {Path(p).name for p in skipped["evaluation"]} == eval_bad
    assert report["calibration"]["images"] == 2 - len(calib_bad)
    good_eval = 12 - 2 - len(eval_bad)
    assert report["fp"]["images"] == report["quantized"]["images"] == good_eval
    assert report["config"]["on_bad_image"] == "skip"


def test_skip_with_every_calibration_image_bad(tmp_path):
    folder = noise_folder(tmp_path / "images", 6, bad=(0, 1, 2, 3, 4, 5))
    with pytest.raises(DataError, match="none of the 2 images could be decoded"):
        run_quantize(_job(folder, on_bad_image="skip"))


def test_bad_policy_and_device_are_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown --on-bad-image 'ignore'"):
        run_quantize(_job(tmp_path, on_bad_image="ignore"))
    with pytest.raises(ConfigError, match="unknown --device 'tpu'"):
        run_quantize(_job(tmp_path, device="tpu"))
