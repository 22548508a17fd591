"""``vitquant inspect FILE``: which reader a file takes, told by its content, not its name (a ``.vqm``
is a safetensors container; a report is JSON text)."""

from __future__ import annotations

from pathlib import Path

from vitquant.errors import ConfigError, ReportError
from vitquant.inspection.program import program_inspection
from vitquant.inspection.report import load_report, report_inspection
from vitquant.inspection.table import Inspection
from vitquant.integer.fileformat import SUFFIX
from vitquant.integer.program import IntegerProgram

__all__ = ["PROGRAM", "REPORT", "file_kind", "inspect_file"]

PROGRAM, REPORT = "program", "report"
_MAX_SAFETENSORS_HEADER = 1 << 32  # a JSON text's first 8 bytes read as a length are far larger


def _is_safetensors(head: bytes) -> bool:
    """A safetensors start: an 8-byte little-endian header length, then the ``{`` opening its JSON."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < _MAX_SAFETENSORS_HEADER


def file_kind(path: str | Path) -> str:
    """:data:`PROGRAM` for a ``.vqm`` name or a safetensors file (the program reader then checks it),
    :data:`REPORT` for JSON text (an object or array); :class:`ReportError` for a missing or unreadable
    file or other content."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return PROGRAM
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except FileNotFoundError as err:
        raise ReportError(f"file not found: {path}") from err
    except IsADirectoryError as err:
        raise ReportError(f"{path} is a directory, not a report or a .vqm file") from err
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err}") from err
    if _is_safetensors(head):
        return PROGRAM
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["):  # the report reader says what is amiss
        return REPORT
    what = "is empty" if not head else f"starts with {head[:8]!r}"
    raise ReportError(f"{path} is neither a JSON report nor a .vqm integer program (it {what})")


def inspect_file(path: str | Path, role: str | None = None, op: str | None = None) -> Inspection:
    """The table of a report (``role``: only its points of that role) or of an integer program (``op``:
    only its ops of that kind)."""
    kind = file_kind(path)
    if kind == PROGRAM:
        if role is not None:
            raise ConfigError(f"--role filters a report's points; {path} is an integer program (use --op KIND)")
        return program_inspection(path, IntegerProgram.load(path), op)
    if op is not None:
        raise ConfigError(f"--op filters an integer program's ops; {path} is a report (use --role ROLE)")
    return report_inspection(path, load_report(path), role)
