"""Shared-folder lookup: env var, ../shared from the working directory, ../shared from the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitquant import paths
from vitquant.errors import DataError


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """No env var, a working directory with no ../shared, and no repo-relative shared folder."""
    monkeypatch.delenv(paths.SHARED_ENV, raising=False)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(paths, "_REPO_SHARED", tmp_path / "absent" / "shared")
    return tmp_path


def test_env_var_wins(tmp_path, monkeypatch):
    chosen = tmp_path / "mine"
    chosen.mkdir()
    monkeypatch.setenv(paths.SHARED_ENV, str(chosen))
    assert paths.shared_dir() == chosen


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_env_var_not_a_directory(tmp_path, monkeypatch, kind):
    target = tmp_path / "shared.txt"
    if kind == "file":
        target.write_text("not a folder")
    monkeypatch.setenv(paths.SHARED_ENV, str(target))
    with pytest.raises(DataError, match="VITQUANT_SHARED"):
        paths.shared_dir()


def test_cwd_parent_shared(no_shared):
    (no_shared / "shared").mkdir()
    assert paths.shared_dir() == Path.cwd().parent / "shared"


def test_cwd_parent_shared_before_repo_shared(no_shared, monkeypatch):
    (no_shared / "shared").mkdir()
    other = no_shared / "elsewhere" / "shared"
    other.mkdir(parents=True)
    monkeypatch.setattr(paths, "_REPO_SHARED", other)
    assert paths.shared_dir() == Path.cwd().parent / "shared"


def test_repo_relative_fallback(no_shared, monkeypatch):
    other = no_shared / "elsewhere" / "shared"
    other.mkdir(parents=True)
    monkeypatch.setattr(paths, "_REPO_SHARED", other)
    assert paths.shared_dir() == other


def test_repo_shared_is_next_to_repository_root():
    repo_root = Path(__file__).resolve().parents[1]  # tests/test_paths.py -> repository root
    assert (repo_root / "src" / "vitquant" / "paths.py").is_file()
    assert paths._REPO_SHARED == repo_root.parent / "shared"


def test_nothing_found(no_shared):
    assert paths.shared_dir() is None
    assert paths.default_sample_images() is None
    assert paths.default_weights("deit_tiny_patch16_224") is None


def test_defaults_inside_shared(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "data" / "imagenet-sample").mkdir(parents=True)
    (shared / "models").mkdir()
    (shared / "models" / "deit_tiny_patch16_224.safetensors").write_bytes(b"x")
    monkeypatch.setenv(paths.SHARED_ENV, str(shared))
    assert paths.default_sample_images() == shared / "data" / "imagenet-sample"
    weights = shared / "models" / "deit_tiny_patch16_224.safetensors"
    assert paths.default_weights("deit_tiny_patch16_224") == weights
    assert paths.default_weights("deit_small_patch16_224") is None


def test_defaults_absent_inside_shared(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(paths.SHARED_ENV, str(shared))
    assert paths.default_sample_images() is None
    assert paths.default_weights("deit_tiny_patch16_224") is None
