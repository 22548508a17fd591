"""Accuracy, fp-vs-quantized fidelity, timing, and the JSON/text report."""

from vitquant.evaluation.evaluate import ModelRun, compare_throughput, evaluate_pair, measure_throughput
from vitquant.evaluation.metrics import ClassificationMeter, FidelityMeter
from vitquant.evaluation.report import REPORT_KEYS, build_report, format_table, write_json

__all__ = [
    "REPORT_KEYS",
    "ClassificationMeter",
    "FidelityMeter",
    "ModelRun",
    "build_report",
    "compare_throughput",
    "evaluate_pair",
    "format_table",
    "measure_throughput",
    "write_json",
]
