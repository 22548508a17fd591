"""Which reader a file takes, told by its content: safetensors (.vqm) or JSON; anything else a clear error."""

from __future__ import annotations

import pytest

from vitquant.errors import ReportError
from vitquant.inspection.reader import PROGRAM, REPORT, file_kind


def test_program_and_report_by_content(tiny_job_files, tmp_path):
    report, program = tiny_job_files
    assert file_kind(report) == REPORT and file_kind(program) == PROGRAM
    copy = tmp_path / "copy.json"  # a misleading name
    copy.write_bytes(program.read_bytes())
    assert file_kind(copy) == PROGRAM
    for text in (b'  \n{"a": 1}', b'\xef\xbb\xbf{"a": 1}', b"[]"):
        copy.write_bytes(text)
        assert file_kind(copy) == REPORT
    assert file_kind(tmp_path / "missing.vqm") == PROGRAM  # the program reader says it is missing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is neither a JSON report nor a \.vqm integer program \(it is empty\)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"\(it starts with b'\\x89PNG"),
        (b"not json at all", "it starts with b'not json'"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x01{", "neither"),  # a '{' after a length no header has
    ],
)
def test_other_content_is_refused(content, message, tmp_path):
    path = tmp_path / "file.dat"
    path.write_bytes(content)
    with pytest.raises(ReportError, match=message):
        file_kind(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ReportError, match="file not found: .*nothing.json"):
        file_kind(tmp_path / "nothing.json")
    with pytest.raises(ReportError, match="is a directory, not a report or a .vqm file"):
        file_kind(tmp_path)
