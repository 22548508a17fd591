"""Every table and example output in the README equals the results file it was copied from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text()


def _tables(text: str) -> list[str]:
    """Every markdown table (consecutive lines starting with '|') of ``text``."""
    return [m.group(0).strip() for m in re.finditer(r"(?:^\|.*\n?)+", text, flags=re.MULTILINE)]


def test_readme_tables_come_from_results_files():
    readme_tables = _tables(README)
    assert readme_tables
    sources = {}
    for md in sorted(RESULTS.rglob("*.md")):
        for table in _tables(md.read_text()):
            sources[table] = md.name
    # every README table of figures (a '%' column) is a results table, verbatim
    for table in readme_tables:
        if "%" in table.splitlines()[0]:
            assert table in sources, f"README table not found in benchmarks/results/*.md:\n{table[:300]}"


@pytest.mark.parametrize("md", sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.md")))
def test_results_tables_are_in_the_readme(md):
    for table in _tables((RESULTS / md).read_text()):
        assert table in README, f"{md}: its table is missing from (or differs in) the README"


def test_readme_main_job_output_is_the_recorded_one():
    recorded = (RESULTS / "main_job.txt").read_text().strip()
    assert recorded in README, "README's main-job output differs from benchmarks/results/main_job.txt"


def test_results_files_record_their_commit():
    import json

    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        commit = data.get("commit") or data.get("config", {}).get("commit")
        assert commit and re.fullmatch(r"[0-9a-f]{40}", commit), path.name
        dirty = data.get("dirty", data.get("config", {}).get("dirty"))
        assert dirty is False, f"{path.name} was produced from uncommitted code"


def test_benchmark_rows_record_their_configuration():
    import json

    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        for row in data.get("rows", []):
            if row.get("calibration_seconds") is not None:  # a quantized row (not FP32)
                assert set(row["qconfig"]["roles"]) >= {"weight", "post_softmax", "post_gelu"}, path.name


def test_readme_figures_come_from_results_folders():
    """Every image the README shows is a committed PNG beside a results JSON that records its commit."""
    import json

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images, "the README shows no figure"
    for link in images:
        path = ROOT / link
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
        assert path.resolve().is_relative_to(RESULTS.resolve()), f"{link} is not under benchmarks/results"
        beside = sorted(path.parent.glob("*.json"))
        assert beside, f"{link}: no results JSON beside it"
        assert any(re.fullmatch(r"[0-9a-f]{40}", str(json.loads(p.read_text()).get("commit"))) for p in beside), link
