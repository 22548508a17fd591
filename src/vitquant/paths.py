"""Where the project's shared real data and weights live (``../shared`` next to the repository).

Nothing from the shared folder is copied into the repository; code and tests find it here and fall
back to their normal behaviour (or skip) when it is absent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vitquant.errors import DataError

logger = logging.getLogger(__name__)

#: Environment variable that points at the shared folder explicitly.
SHARED_ENV = "VITQUANT_SHARED"

# src/vitquant/paths.py -> parents[2] is the repository root, parents[3] the folder that holds it.
_REPO_SHARED = Path(__file__).resolve().parents[3] / "shared"


def _candidates() -> list[Path]:
    """Fallback locations, in the order they are tried."""
    return [Path.cwd().parent / "shared", _REPO_SHARED]


def shared_dir() -> Path | None:
    """Return the shared folder, or ``None`` when there is none.

    ``$VITQUANT_SHARED`` wins when set (non-empty) and must then be a directory. Otherwise the first
    existing directory of ``<cwd>/../shared`` and ``<repository>/../shared`` is used.
    """
    env = os.environ.get(SHARED_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"${SHARED_ENV} is set to {env!r}, which is not a directory")
        return path
    for path in _candidates():
        if path.is_dir():
            logger.debug("using shared folder %s", path)
            return path
    return None


def _shared_child(*parts: str) -> Path | None:
    """``shared_dir()/parts`` if both the shared folder and that child exist, else ``None``."""
    root = shared_dir()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None


def default_sample_images() -> Path | None:
    """The shared 1,000-image ImageNet sample folder, or ``None`` when absent."""
    return _shared_child("data", "imagenet-sample")


def default_weights(timm_name: str) -> Path | None:
    """The shared safetensors weights of ``timm_name``, or ``None`` when absent."""
    return _shared_child("models", f"{timm_name}.safetensors")


def source_commit() -> dict[str, object]:
    """The git commit of this source tree (``commit`` None outside a checkout; ``dirty``: uncommitted
    changes under src/ or benchmarks/), recorded in reports and results files."""
    import subprocess

    root = Path(__file__).resolve().parents[2]  # the repository root in a source checkout

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", "src", "benchmarks/*.py") if commit else None
    return {"commit": commit, "dirty": bool(status)}
