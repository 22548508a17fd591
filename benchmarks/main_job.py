"""The README's main-job example: run ``vitquant quantize`` with no options and keep what it printed.

Writes ``results/main_job.txt`` (the printed report, absolute paths of the shared folder written as
``../shared``) and ``results/main_job.json`` (the full report, with the commit it came from).

    python benchmarks/main_job.py
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from vitquant.cli import main as cli_main
from vitquant.paths import shared_dir

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["quantize", "-q", "--json", str(RESULTS / "main_job.json")])
    text = out.getvalue()
    shared = shared_dir()
    if shared is not None:
        text = text.replace(str(shared.resolve()), "../shared")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("report written to")) + "\n"
    (RESULTS / "main_job.txt").write_text(text)
    print(text, end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
