"""Sharded evaluation: two gloo processes under torchrun give the single-process report bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CLI, noise_folder, torchrun_environment
from vitquant.errors import ConfigError, DataError
from vitquant.evaluation import run_pair
from vitquant.evaluation.distributed import Shard, current_shard, exchange, gather_pair, resolve_device


def test_two_processes_give_the_single_process_report(tmp_path):
    folder = noise_folder(tmp_path / "images", 17, bad=(5, 12))
    args = ["quantize", "--recipe", "repq-vit", "--calib-data", str(folder), "--calib-size", "2",
            "--batch-size", "3", "--on-bad-image", "skip", "-q"]
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    runs = [
        subprocess.Popen([sys.executable, str(TINY_CLI), *args, "--json", str(single)], env=torchrun_environment(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(TINY_CLI), *args, "--json", str(sharded)], env=torchrun_environment(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)
    one, two = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert (one["config"]["processes"], two["config"]["processes"]) == (1, 2)
    for model in ("fp", "quantized"):
        for key in ("images", "top1", "top5"):
            assert two[model][key] == one[model][key], (model, key)
    assert two["fidelity"] == one["fidelity"]  # agreement and mean KL, bit for bit
    timeless = [[{k: v for k, v in point.items() if k != "search_seconds"} for point in report["calibration"]["points"]]
                for report in (one, two)]
    assert timeless[0] == timeless[1]  # the same calibration on both ranks as alone
    assert two["skipped_images"] == one["skipped_images"]
    skipped = one["skipped_images"]["calibration"] + one["skipped_images"]["evaluation"]
    assert sorted(Path(p).name for p in skipped) == ["img05.JPEG", "img12.JPEG"]
    assert one["fp"]["images"] == 17 - 2 - len(one["skipped_images"]["evaluation"])
    assert one["fidelity"]["mean_kl"] > 0.0 and one["fidelity"]["top1_agreement"] < 100.0  # not trivially equal
    printed = outputs[1]
    assert printed.count("top-1 agreement") == 1  # rank 0 alone prints


def test_an_error_in_one_process_stops_all_with_its_message(tmp_path):
    """img04 is undecodable: its process fails, the other does not wait for it forever, rank 0 names it."""
    folder = noise_folder(tmp_path / "images", 9, bad=(4,))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(TINY_CLI), "quantize", "--recipe", "repq-vit", "--calib-data", str(folder), "--calib-size", "2",
                          "--batch-size", "2", "-q"], env=torchrun_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("vitquant: error:")]
    assert errors and all("cannot decode image" in line and "img04.JPEG" in line for line in errors)


# ------------------------------------------------------------------------ one process, in-process
def test_shard_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_shard() == Shard(0, 1, 0) and current_shard().is_main and not current_shard().sharded
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_shard() == Shard(3, 4, 1) and not current_shard().is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent torchrun environment"):
        current_shard()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match=r"\$RANK must be an integer"):
        current_shard()


def test_device_resolution(monkeypatch):
    assert resolve_device("cpu", Shard()) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown --device 'tpu'"):
        resolve_device("tpu", Shard())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda", Shard())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", Shard(3, 4, 1)) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="wants GPU 2, this node has 2"):
        resolve_device("cuda", Shard(2, 4, 2))


def test_one_process_exchange_is_the_identity_and_raises_errors():
    assert exchange(5, Shard()) == [5]
    with pytest.raises(DataError, match="bad image"):
        exchange(DataError("bad image"), Shard())


def test_gather_pair_of_one_process_is_its_own_evaluation():
    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(2, 4), torch.tensor([0, 2]))]
    local = run_pair(model, model, batches, progress=False)
    assert gather_pair(local, Shard()) is local


def test_model_fingerprint_sees_every_tensor_and_the_config():
    from vitquant.evaluation.distributed import model_fingerprint

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    base = model_fingerprint(model, {"bits": 4})
    assert model_fingerprint(model, {"bits": 4}) == base
    assert model_fingerprint(model, {"bits": 3}) != base
    with torch.no_grad():
        model[1].running_mean[0] += 1e-7  # a buffer, not a parameter
    assert model_fingerprint(model, {"bits": 4}) != base


def test_processes_with_different_calibrations_are_stopped(monkeypatch):
    from vitquant.errors import NumericalError
    from vitquant.evaluation import distributed

    shard = Shard(0, 3, 0)
    monkeypatch.setattr(distributed, "exchange", lambda value, shard: [value, value, "other"])
    with pytest.raises(NumericalError, match=r"the calibrated model differs between processes \(ranks \[2\]"):
        distributed.check_same_everywhere("abc", shard, "the calibrated model")
    monkeypatch.setattr(distributed, "exchange", lambda value, shard: [value] * 3)
    distributed.check_same_everywhere("abc", shard, "the calibrated model")
