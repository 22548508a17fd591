"""The documentation's ``vitquant inspect`` example: quantize the real DeiT-Tiny with integer kernels, save
the report and the integer program, and keep the first lines of three ``vitquant inspect`` commands.

Writes ``results/inspect_example.txt`` (what the commands print, first lines of each) and
``results/inspect_example.json`` (the commands, the commit). The report and the ``.vqm`` go to a
temporary folder: they are what the commands read, not results.

    python benchmarks/inspect_example.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from vitquant.cli import main as cli_main
from vitquant.paths import source_commit

RESULTS = Path(__file__).parent / "results"
QUANTIZE = ["quantize", "-q", "--calib-size", "32", "--eval-size", "16", "--nonlinear", "ibert",
            "--save", "deit_tiny_w4a4.vqm", "--json", "deit_tiny_w4a4.json"]
INSPECT = [(["inspect", "deit_tiny_w4a4.json", "--role", "post_softmax"], 7),
           (["inspect", "deit_tiny_w4a4.json", "--role", "weight"], 7),
           (["inspect", "deit_tiny_w4a4.vqm", "--op", "requant"], 8)]


def _run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"vitquant {' '.join(argv)} exited with {code}")
    return out.getvalue()


def main() -> int:
    provenance = source_commit()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the commands name their files relatively, as the documentation shows them
        try:
            _run(QUANTIZE)
            parts = []
            for argv, lines in INSPECT:
                text = _run(argv).splitlines()
                parts += [f"$ vitquant {' '.join(argv)}", *text[:lines]]
                if len(text) > lines:
                    parts.append("...")
        finally:
            os.chdir(cwd)
    text = "\n".join(parts) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inspect_example.txt").write_text(text)
    record = {"quantize": "vitquant " + " ".join(QUANTIZE),
              "inspect": ["vitquant " + " ".join(argv) for argv, _ in INSPECT], **provenance}
    (RESULTS / "inspect_example.json").write_text(json.dumps(record, indent=2) + "\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
