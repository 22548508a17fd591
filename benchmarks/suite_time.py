"""Benchmark: how long the test suite takes, the way a new user meets it (an empty torch compile cache).

Runs the README's test command (``./scripts/test.sh``, which sets up ``.venv`` if needed, then runs
pytest) with ``TORCHINDUCTOR_CACHE_DIR`` pointing at a new, empty folder, and records its wall-clock
time, pytest's summary line, the slowest tests, the commit and the machine. Run it on an idle machine:
the tests run beside nothing else. Writes ``results/suite_time.{md,json}``.

    ./scripts/setup.sh && .venv/bin/python benchmarks/suite_time.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attention_schemes import commit_note, environment, write_results

ROOT = Path(__file__).resolve().parents[1]


def run(durations: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vitquant-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(["./scripts/test.sh", f"--durations={durations}"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    lines = proc.stdout.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "")
    slowest = [line.strip() for line in lines if re.match(r"\s*\d+\.\d+s (call|setup|teardown)\s", line)][:durations]
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-3000:])
    return {"command": "./scripts/test.sh --durations=%d" % durations, "compile_cache": "empty (a new folder)",
            "seconds": seconds, "exit_status": proc.returncode, "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "summary": summary, "slowest": slowest,
            "cpus": os.cpu_count(), **environment()}


def to_markdown(res: dict) -> str:
    lines = [
        f"The test suite (`{res['command']}`) with an empty torch compile cache, on {res['cpus']} CPUs "
        f"({res['machine']}), torch {res['torch']}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.1f}' for v in res['load_average_before'])}, after "
        f"{', '.join(f'{v:.1f}' for v in res['load_average_after'])}; {commit_note(res)}.",
        "",
        "| tests | exit status | minutes | seconds |",
        "|---|---:|---:|---:|",
        f"| {res['summary']} | {res['exit_status']} | {res['seconds'] / 60:.1f} | {res['seconds']:.0f} |",
        "",
        "Slowest tests:",
        "",
        *[f"- `{line}`" for line in res["slowest"]],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--durations", type=int, default=10, help="slowest tests listed (default 10)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    res = run(args.durations)
    write_results(res, args.out, "suite_time", to_markdown(res))
    return 0 if res["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
