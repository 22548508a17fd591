"""The ``vitquant`` command on the tiny random ViT of conftest instead of real weights, as a script: alone,
under ``torchrun`` (tests/evaluation/test_distributed.py) or as a sweep's job command (tests/sweep)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest

from conftest import tiny_job_model  # noqa: E402
from vitquant import cli, workflow  # noqa: E402

if __name__ == "__main__":
    workflow.create_model = tiny_job_model
    sys.exit(cli.main(sys.argv[1:]))
