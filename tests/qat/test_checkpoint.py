"""Checkpoint files: round trip, and a clear error for a missing, foreign, corrupted or truncated file or
another run's."""

from __future__ import annotations

import pytest
import torch

from vitquant.errors import CheckpointError
from vitquant.qat.checkpoint import check_same_run, load_checkpoint, save_checkpoint


def _payload() -> dict:
    return {"step": 3, "run": {"steps": 8, "lr": 1e-4}, "model": {"w": torch.arange(6.0)},
            "rng": {"torch": torch.get_rng_state()}, "history": [{"loss": 1.5}]}


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint(path, _payload())
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(6.0))
    assert loaded["history"] == [{"loss": 1.5}] and not (tmp_path / "sub" / "ck.pt.tmp").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "version"])
def test_damaged_files_are_refused_with_the_reason(tmp_path, damage):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _payload())
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
        expected = "corrupted or truncated"
    elif damage == "truncate":
        raw = raw[: len(raw) - 100]
        expected = "corrupted or truncated"
    elif damage == "foreign":
        raw = bytearray(b"PK\x03\x04 a zip file, not ours")
        expected = "is not a vitquant training checkpoint"
    else:
        raw = raw.replace(b"vitquant-qat-checkpoint 1", b"vitquant-qat-checkpoint 9", 1)
        expected = "has format '9'"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_missing_file_and_unwritable_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "file" / "ck.pt", _payload())


def test_another_run_is_named_by_what_differs(tmp_path):
    check_same_run(tmp_path, {"steps": 8, "seed": 0}, {"steps": 8, "seed": 0})
    with pytest.raises(CheckpointError, match=r"different run \(seed: 0 in the checkpoint, 1 now; steps: 8 in the checkpoint, 9 now\)"):
        check_same_run(tmp_path, {"steps": 8, "seed": 0}, {"steps": 9, "seed": 1})
