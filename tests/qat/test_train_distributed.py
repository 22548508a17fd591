"""Data-parallel training: two gloo processes under torchrun, b images each, train as one process of 2b
images (the same images per step, gradients averaged, the IRM's statistics summed over both), and end
with the same model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_CLI, noise_folder, torchrun_environment


def test_two_processes_train_as_one_process_with_their_joint_batch(tmp_path):
    """Both ranks end with the same trained model: the job compares a SHA-256 of every tensor of each
    rank's model after training and fails otherwise. The losses of every step are one process's with
    twice the batch, up to float summation order."""
    folder = noise_folder(tmp_path / "images", 16)
    args = ["train", "--recipe", "repq-vit", "--calib-data", str(folder), "--calib-size", "2", "--eval-size", "4",
            "--batch-size", "4", "--steps", "3", "--lr", "1e-3", "--quant-lr", "1e-3", "--label-weight", "0.5", "-q"]
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    runs = [
        subprocess.Popen([sys.executable, str(TINY_CLI), *args, "--train-batch-size", "4", "--json", str(single)],
                         env=torchrun_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(TINY_CLI), *args, "--train-batch-size", "2", "--json", str(sharded)],
                         env=torchrun_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)
    one, two = json.loads(single.read_text())["training"], json.loads(sharded.read_text())["training"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["images"] == two["images"] == 12
    assert [h["images"] for h in two["history"]] == [4, 4, 4]  # the joint batch, counted over both ranks
    for a, b in zip(one["history"], two["history"]):
        for key in ("loss", "kd", "dgd", "ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
        assert b["correct"] == a["correct"]
    assert one["history"][0]["loss"] != one["history"][-1]["loss"]  # it did train
    assert outputs[1].count("training: 3 steps") == 1  # rank 0 alone prints
