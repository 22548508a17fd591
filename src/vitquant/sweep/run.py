"""Run a sweep: every (model, recipe, bits) job is its own ``vitquant quantize`` process writing one results
file, ``<model>_<recipe>_w<W>a<A>.json``: the report with ``"status": "ok"``, or ``"status": "failed"`` with
the error. A job that fails (a bad combination, a crash, no memory) costs only its own row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitquant.errors import ConfigError
from vitquant.evaluation.report import write_json
from vitquant.paths import source_commit

__all__ = ["SweepJob", "parse_bits", "parse_names", "plan_sweep", "run_job", "run_sweep"]

log = logging.getLogger(__name__)

#: How a job runs ``vitquant``: this interpreter, the installed (or ``PYTHONPATH``) package.
DEFAULT_COMMAND = (sys.executable, "-m", "vitquant")
_ERROR_PREFIX = "vitquant: error: "


@dataclass(frozen=True)
class SweepJob:
    """One point of the sweep."""

    model: str
    recipe: str
    w_bits: int
    a_bits: int

    @property
    def name(self) -> str:
        """The results file's stem, ``<model>_<recipe>_w<W>a<A>`` (other characters than ``[A-Za-z0-9._-]``
        in a name become ``-``)."""
        safe = [re.sub(r"[^A-Za-z0-9._-]+", "-", text) for text in (self.model, self.recipe)]
        return f"{safe[0]}_{safe[1]}_w{self.w_bits}a{self.a_bits}"

    def argv(self) -> list[str]:
        return ["quantize", "--model", self.model, "--recipe", self.recipe,
                "--w-bits", str(self.w_bits), "--a-bits", str(self.a_bits)]


def parse_names(text: str, flag: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]``; :class:`ConfigError` for an empty or repeated name."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"{flag} {text!r}: empty name in the comma-separated list")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{flag} {text!r}: {', '.join(repeated)} listed twice")
    return names


def parse_bits(text: str) -> list[tuple[int, int]]:
    """``4/4,3/3`` -> ``[(4, 4), (3, 3)]`` (weight/activation bits); the widths themselves are each job's to
    check, so an impossible one fails that job alone."""
    pairs = []
    for item in parse_names(text, "--bits"):
        match = re.fullmatch(r"(\d+)/(\d+)", item)
        if match is None:
            raise ConfigError(f"--bits {text!r}: {item!r} is not W/A, e.g. 4/4")
        pairs.append((int(match.group(1)), int(match.group(2))))
    return pairs


def plan_sweep(models: Sequence[str], recipes: Sequence[str], bits: Sequence[tuple[int, int]]) -> list[SweepJob]:
    """Every combination, models outermost; :class:`ConfigError` if two would write the same file."""
    jobs = [SweepJob(m, r, w, a) for m in models for r in recipes for w, a in bits]
    names = [job.name for job in jobs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"sweep jobs would share results files: {', '.join(clash)}")
    return jobs


def _error_text(stderr: str, returncode: int) -> str:
    """The job's own error line (``vitquant: error: ...``), else the last line it printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(_ERROR_PREFIX):
            return line[len(_ERROR_PREFIX):]
    return lines[-1] if lines else f"exited with status {returncode} and printed nothing"


def run_job(job: SweepJob, out: Path, options: Sequence[str] = (), command: Sequence[str] | None = None,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``job`` as its own process (``command``, default :data:`DEFAULT_COMMAND`, followed by the
    ``quantize`` arguments) and write ``out/<job.name>.json``; returns ``{"file", "status", "error"}``."""
    path, report_path = out / f"{job.name}.json", out / f".{job.name}.report.json"
    argv = [*(DEFAULT_COMMAND if command is None else command), *job.argv(), *options, "--json", str(report_path), "-q"]
    log.info("job %s: %s", job.name, " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        returncode, stderr = proc.returncode, proc.stderr
    except OSError as exc:  # the command itself could not start
        returncode, stderr = -1, f"{_ERROR_PREFIX}cannot run {argv[0]}: {exc}"
    if returncode == 0 and report_path.is_file():
        record = {"status": "ok", "job": asdict(job), **json.loads(report_path.read_text(encoding="utf-8"))}
    else:
        record = {"status": "failed", "job": asdict(job), "error": _error_text(stderr, returncode),
                  "returncode": returncode, "stderr_tail": stderr.splitlines()[-20:], "command": argv,
                  **source_commit()}
    write_json(record, path)
    report_path.unlink(missing_ok=True)
    if record["status"] == "failed":
        log.warning("job %s failed: %s", job.name, record["error"])
    return {"file": str(path), "status": record["status"], "error": record.get("error")}


def run_sweep(jobs: Sequence[SweepJob], out: Path, options: Sequence[str] = (), parallel: int = 1,
              command: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs``, ``parallel`` at a time (each with ``cpu_count / parallel`` threads unless
    ``OMP_NUM_THREADS`` is set), each writing its results file in ``out``; the outcomes in job order."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {parallel!r}")
    if not jobs:
        raise ConfigError("the sweep has no jobs")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda job: run_job(job, out, options, command, env), jobs))
