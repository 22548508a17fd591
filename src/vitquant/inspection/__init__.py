"""``vitquant inspect``: per-layer tables of what a file holds. A JSON report (``vitquant quantize --json``
or a sweep results file): every calibrated point with its quantizer, bits, levels and fitted parameters
(report.py); a ``.vqm`` integer program: every op with its constants' dtypes, shapes and ranges
(program.py). reader.py tells the two apart by content; table.py formats the rows."""

from vitquant.inspection.program import program_inspection
from vitquant.inspection.reader import file_kind, inspect_file
from vitquant.inspection.report import load_report, report_inspection
from vitquant.inspection.table import Inspection, compact_params, format_table

__all__ = [
    "Inspection",
    "compact_params",
    "file_kind",
    "format_table",
    "inspect_file",
    "load_report",
    "program_inspection",
    "report_inspection",
]
