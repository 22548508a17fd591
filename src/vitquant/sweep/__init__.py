"""Sweeps: models x recipes x bit widths as independent jobs, one results file each (run.py), and one
table of them all (merge.py)."""

from vitquant.sweep.merge import SweepResults, markdown_table, read_results
from vitquant.sweep.run import SweepJob, parse_bits, parse_names, plan_sweep, run_job, run_sweep

__all__ = [
    "SweepJob",
    "SweepResults",
    "markdown_table",
    "parse_bits",
    "parse_names",
    "plan_sweep",
    "read_results",
    "run_job",
    "run_sweep",
]
