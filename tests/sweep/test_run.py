"""Sweep jobs: planning, one results file per job, failures recorded in their own file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import noise_folder
from vitquant import cli
from vitquant.errors import ConfigError
from vitquant.sweep import SweepJob, parse_bits, parse_names, plan_sweep, run_job
from vitquant.sweep import run as sweep_run

TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"


def test_plan_is_every_combination_with_its_file_name():
    jobs = plan_sweep(["deit_tiny", "vit/s"], ["repq-vit"], parse_bits("4/4,3/2"))
    assert [job.name for job in jobs] == ["deit_tiny_repq-vit_w4a4", "deit_tiny_repq-vit_w3a2",
                                          "vit-s_repq-vit_w4a4", "vit-s_repq-vit_w3a2"]
    assert jobs[1].argv() == ["quantize", "--model", "deit_tiny", "--recipe", "repq-vit", "--w-bits", "3", "--a-bits", "2"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: parse_bits("4/4,4"), "'4' is not W/A"),
    (lambda: parse_bits("4/4,,3/3"), "empty name"),
    (lambda: parse_names("a,b,a", "--recipes"), "a listed twice"),
    (lambda: plan_sweep(["m/x", "m-x"], ["r"], [(4, 4)]), "would share results files: m-x_r_w4a4"),
])
def test_bad_plans_are_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_a_crashing_job_writes_a_failed_file(tmp_path):
    job = SweepJob("m", "r", 4, 4)
    outcome = run_job(job, tmp_path, command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    record = json.loads((tmp_path / "m_r_w4a4.json").read_text())
    assert outcome["status"] == record["status"] == "failed"
    assert record["error"] == "exited with status 3 and printed nothing" and record["returncode"] == 3
    assert record["job"] == {"model": "m", "recipe": "r", "w_bits": 4, "a_bits": 4}
    outcome = run_job(job, tmp_path, command=[str(tmp_path / "no-such-command")])
    assert outcome["status"] == "failed" and "cannot run" in outcome["error"]


def test_sweep_keeps_going_past_a_failed_job_and_merge_lists_it(tmp_path, monkeypatch, capsys):
    """A misspelt recipe (bitlog2-singel-17) fails in its own process: that job fails, the other runs (both
    at once, each its own process on the tiny random ViT), and the merged table lists the failure."""
    folder = noise_folder(tmp_path / "images", 10)
    out = tmp_path / "sweep"
    monkeypatch.setattr(sweep_run, "DEFAULT_COMMAND", (sys.executable, str(TINY_CLI)))
    rc = cli.main(["sweep", "--models", "deit_tiny", "--recipes", "repq-vit,bitlog2-singel-17", "--bits", "6/6",
                   "--out", str(out), "--jobs", "2", "--calib-data", str(folder), "--calib-size", "2",
                   "--batch-size", "4", "-q"])
    printed = capsys.readouterr().out
    assert rc == 1  # a job failed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["deit_tiny_bitlog2-singel-17_w6a6.json", "deit_tiny_repq-vit_w6a6.json"]
    failed, ok = (json.loads((out / name).read_text()) for name in names)
    assert failed["status"] == "failed" and "unknown recipe 'bitlog2-singel-17'" in failed["error"]
    assert ok["status"] == "ok" and ok["job"] == {"model": "deit_tiny", "recipe": "repq-vit", "w_bits": 6, "a_bits": 6}
    assert ok["quantized"]["images"] == 8 and ok["config"]["calib_size"] == 2 and ok["config"]["w_bits"] == 6
    assert "2 results files" in printed and "(1 ok, 1 failed)" in printed

    table_file = tmp_path / "table.md"
    assert cli.main(["merge", str(out), "--markdown", str(table_file)]) == 0
    table = capsys.readouterr().out
    assert table == table_file.read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| model | recipe | bits |")
    assert lines[2].startswith("| deit_tiny | repq-vit | W6A6 | 8 | ") and len(lines[2].split(" | ")) == 10
    assert lines[4:] == ["Failed jobs (1):", "- deit_tiny bitlog2-singel-17 W6A6 (`deit_tiny_bitlog2-singel-17_w6a6.json`): "
                         + failed["error"]]
