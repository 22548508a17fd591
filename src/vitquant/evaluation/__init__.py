"""Accuracy, fp-vs-quantized fidelity, timing, and the JSON/text report."""

from vitquant.evaluation.evaluate import (
    ModelRun,
    PairEvaluation,
    compare_throughput,
    evaluate_pair,
    log_pair,
    measure_throughput,
    run_pair,
)
from vitquant.evaluation.metrics import ClassificationMeter, FidelityMeter
from vitquant.evaluation.report import REPORT_KEYS, build_report, format_table, write_json

__all__ = [
    "REPORT_KEYS",
    "ClassificationMeter",
    "FidelityMeter",
    "ModelRun",
    "PairEvaluation",
    "build_report",
    "compare_throughput",
    "evaluate_pair",
    "format_table",
    "log_pair",
    "measure_throughput",
    "run_pair",
    "write_json",
]
