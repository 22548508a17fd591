"""Calibration/evaluation split: seeded, disjoint, and loud about impossible sizes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vitquant.data import ImageRecord, split_calibration_eval
from vitquant.errors import DataError


def records(folder: Path, n: int) -> list[ImageRecord]:
    """``n`` records (files need not exist: the split only looks at paths)."""
    return [ImageRecord(folder / f"img_{i:03d}.JPEG", i % 10) for i in range(n)]


def names(recs: list[ImageRecord]) -> list[str]:
    return [r.path.name for r in recs]


def test_same_seed_same_split(tmp_path):
    pool = records(tmp_path, 100)
    first = split_calibration_eval(pool, pool, 32, None, seed=0)
    assert first == split_calibration_eval(pool, pool, 32, None, seed=0)


def test_other_seed_other_calibration(tmp_path):
    pool = records(tmp_path, 100)
    calib_a, _ = split_calibration_eval(pool, pool, 32, None, seed=0)
    calib_b, _ = split_calibration_eval(pool, pool, 32, None, seed=1)
    assert set(names(calib_a)) != set(names(calib_b))


def test_calibration_is_seeded_draw_without_replacement(tmp_path):
    pool = records(tmp_path, 100)
    calib, _ = split_calibration_eval(pool, pool, 32, None, seed=7)
    expected = random.Random(7).sample(sorted(pool, key=lambda r: r.path), 32)
    assert calib == sorted(expected, key=lambda r: r.path)
    assert len(set(names(calib))) == 32


def test_calibration_independent_of_input_order(tmp_path):
    pool = records(tmp_path, 50)
    shuffled = pool[:]
    random.Random(3).shuffle(shuffled)
    calib, _ = split_calibration_eval(pool, pool, 8, None, seed=5)
    assert calib == split_calibration_eval(shuffled, shuffled, 8, None, seed=5)[0]


def test_same_folder_disjoint_and_sorted(tmp_path):
    pool = records(tmp_path, 100)
    calib, evaluation = split_calibration_eval(pool, list(reversed(pool)), 32, None, seed=0)
    assert len(calib) == 32 and len(evaluation) == 68
    assert not set(names(calib)) & set(names(evaluation))
    assert set(names(calib)) | set(names(evaluation)) == set(names(pool))
    assert evaluation == sorted(evaluation, key=lambda r: r.path)


def test_disjoint_by_resolved_path(tmp_path):
    (tmp_path / "sub").mkdir()
    pool = records(tmp_path, 10)
    other_spelling = [ImageRecord(tmp_path / "sub" / ".." / r.path.name, r.label) for r in pool]
    calib, evaluation = split_calibration_eval(pool, other_spelling, 4, None, seed=0)
    assert len(evaluation) == 6
    assert not set(names(calib)) & set(names(evaluation))


def test_separate_folders_keep_all_eval(tmp_path):
    calib_pool = records(tmp_path / "train", 20)
    eval_pool = records(tmp_path / "val", 15)
    calib, evaluation = split_calibration_eval(calib_pool, eval_pool, 5, None, seed=0)
    assert all(r.path.parent.name == "train" for r in calib)
    assert evaluation == eval_pool


def test_eval_size_takes_seeded_sample_after_removal(tmp_path):
    pool = records(tmp_path, 40)
    calib, evaluation = split_calibration_eval(pool, pool, 5, 7, seed=2)
    remaining = [r for r in pool if r not in calib]
    assert len(evaluation) == 7 and set(evaluation) <= set(remaining)
    assert evaluation == sorted(evaluation, key=lambda r: r.path)
    assert evaluation != remaining[:7]  # spread over the set, not the first paths
    assert split_calibration_eval(pool, pool, 5, 7, seed=2)[1] == evaluation
    assert split_calibration_eval(pool, pool, 5, 7, seed=3)[1] != evaluation
    assert split_calibration_eval(pool, pool, 5, None, seed=2)[0] == calib  # calibration draw unchanged


def test_eval_size_larger_than_available_uses_all(tmp_path):
    pool = records(tmp_path, 10)
    _, evaluation = split_calibration_eval(pool, pool, 3, 100, seed=0)
    assert len(evaluation) == 7


def test_calibration_too_small(tmp_path):
    pool = records(tmp_path, 10)
    with pytest.raises(DataError, match="larger than the 10 calibration images"):
        split_calibration_eval(pool, pool, 32, None, seed=0)


@pytest.mark.parametrize("calib_size", [0, -3])
def test_empty_calibration(tmp_path, calib_size):
    pool = records(tmp_path, 10)
    with pytest.raises(DataError, match="empty calibration set"):
        split_calibration_eval(pool, pool, calib_size, None, seed=0)


def test_eval_empty_after_removing_calibration(tmp_path):
    pool = records(tmp_path, 5)
    with pytest.raises(DataError, match="evaluation set is empty"):
        split_calibration_eval(pool, pool, 5, None, seed=0)


def test_eval_size_zero(tmp_path):
    pool = records(tmp_path, 10)
    with pytest.raises(DataError, match="eval_size"):
        split_calibration_eval(pool, pool, 2, 0, seed=0)


@pytest.mark.parametrize("calib_size, eval_size", [(2.0, None), (True, None), (2, 3.5)])
def test_sizes_must_be_integers(tmp_path, calib_size, eval_size):
    pool = records(tmp_path, 10)
    with pytest.raises(DataError, match="must be an integer"):
        split_calibration_eval(pool, pool, calib_size, eval_size, seed=0)
