"""``vitquant train`` end to end on the tiny random ViT: the report with its training section, a resumed
run, and clear errors for bad settings, missing or exhausted training folders and foreign checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import noise_folder, tiny_job_model
from vitquant import cli, workflow


@pytest.fixture()
def tiny_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The tiny ViT instead of real weights, one thread, and 16 noise images."""
    monkeypatch.setattr(workflow, "create_model", tiny_job_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield noise_folder(tmp_path / "images", 16)
    torch.set_num_threads(threads)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _train_argv(folder: Path, *more: str) -> list[str]:
    return ["train", "--recipe", "repq-vit", "--calib-data", str(folder), "--calib-size", "2", "--eval-size", "4",
            "--batch-size", "4", "--steps", "4", "--train-batch-size", "4", "--lr", "1e-3", "-q", *more]


def test_train_writes_the_quantize_report_with_a_training_section_and_resumes(tiny_job, tmp_path, capsys):
    report_file, checkpoint, program = tmp_path / "r.json", tmp_path / "ck.pt", tmp_path / "m.vqm"
    rc, out, _ = _run(_train_argv(tiny_job, "--checkpoint", str(checkpoint), "--json", str(report_file), "--levels",
                                  "--nonlinear", "ibert", "--save", str(program)), capsys)
    assert rc == 0 and checkpoint.is_file() and program.is_file()  # integer kernels in the loop (ste), then converted
    report = json.loads(report_file.read_text())
    training = report["training"]
    assert training["steps"] == 4 and training["images"] == 12 and training["held_out_images"] == 4
    assert training["folder"] == str(tiny_job.resolve()) and training["resumed_from"] is None
    assert len(training["history"]) == 4 and training["settings"]["lr"] == 1e-3 and training["trained"]["rectifiers"] == 4
    assert report["config"]["training"]["steps"] == 4 and report["config"]["train_data"] is None
    assert training["settings"]["kernels"] == "ste"  # the default
    assert report["fp"]["images"] == report["quantized"]["images"] == 4  # evaluated on the held-out images
    assert report["saved"]["ops"] > 0 and report["nonlinear"]["counts"]
    assert all(p["levels_used"] is not None for p in report["calibration"]["points"] if p["role"] != "residual")  # 24-bit: not counted
    assert "training: 4 steps (1.33 epochs) on 12 images" in out and "quantization points (levels" in out
    assert "top-1 agreement" in out
    # resumed at its last step: nothing left to train, the same trained model and report
    again = tmp_path / "again.json"
    rc, out, _ = _run(_train_argv(tiny_job, "--checkpoint", str(checkpoint), "--resume", "--json", str(again),
                                  "--nonlinear", "ibert"), capsys)
    assert rc == 0 and "resumed at step 4" in out
    second = json.loads(again.read_text())
    assert second["training"]["resumed_from"] == 4 and second["training"]["history"] == training["history"]
    assert second["quantized"]["top1"] == report["quantized"]["top1"] and second["fidelity"] == report["fidelity"]
    # the same checkpoint with other settings
    rc, _, err = _run(_train_argv(tiny_job, "--checkpoint", str(checkpoint), "--resume", "--lr", "2e-3",
                                  "--nonlinear", "ibert"), capsys)
    assert rc == 2 and "was written by a different run (lr: 0.001 in the checkpoint, 0.002 now)" in err


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--epochs", "2"], "give --steps or --epochs, not both"),
        (["--resume"], "--resume needs --checkpoint FILE"),
        (["--train-data", "/nonexistent/train"], "image folder /nonexistent/train does not exist"),
        (["--train-batch-size", "13"], "12 training images do not fill one step of 13 images"),
    ],
)
def test_bad_training_input_exits_2_with_message(tiny_job, capsys, more, message):
    argv = _train_argv(tiny_job)
    if "--epochs" not in more and "--steps" in more:
        i = argv.index("--steps")
        argv[i:i + 2] = []
    rc, _, err = _run(argv + more, capsys)
    assert rc == 2 and message in err, err


def test_train_kernels_float_trains_with_the_exact_ops(tiny_job, tmp_path, capsys):
    report_file = tmp_path / "r.json"
    rc, _, _ = _run(_train_argv(tiny_job, "--nonlinear", "ivit", "--train-kernels", "float", "--steps", "1",
                                "--json", str(report_file)), capsys)
    report = json.loads(report_file.read_text())
    assert rc == 0 and report["training"]["settings"]["kernels"] == "float" and report["nonlinear"]["counts"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(_train_argv(tiny_job, "--train-kernels", "int"))


def test_no_training_image_is_an_evaluation_image(tiny_job, tmp_path, capsys):
    calib = noise_folder(tmp_path / "calib", 4)
    argv = ["train", "--calib-data", str(calib), "--calib-size", "2", "--eval-data", str(tiny_job),
            "--train-data", str(tiny_job), "--steps", "1", "--train-batch-size", "2", "-q"]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and f"no training images: all 16 images of {tiny_job} are evaluation images" in err


def test_a_file_that_is_no_checkpoint_is_refused(tiny_job, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    rc, _, err = _run(_train_argv(tiny_job, "--checkpoint", str(junk), "--resume"), capsys)
    assert rc == 2 and f"{junk} is not a vitquant training checkpoint" in err
