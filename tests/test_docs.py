"""The README and the documentation site (docs/) against the results files they quote, and the site's build.

- Every table of figures (a '%' column) in the README or docs/ is a table of a results file under
  ``benchmarks/results/``, verbatim, or the headline table that ``benchmarks/headline.py`` builds from
  them; every results table appears in docs/.
- The main job's recorded output is in the README and on the getting-started page; every recorded
  command output (``results/*.txt``) is shown verbatim in docs/.
- Every figure shown is a committed PNG under ``benchmarks/results/`` beside a results JSON that records
  its commit; every results JSON records a clean commit and each row its configuration.
- ``mkdocs build --strict`` passes: a broken link or anchor, a page missing from the nav, or a docstring
  mkdocstrings cannot render fails the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(DOCS).as_posix(): p.read_text() for p in sorted(DOCS.rglob("*.md"))}
FIGURE_URI = "results/"  # docs/hooks.py publishes benchmarks/results/<path> as results/<path>
README_LIMIT = 15_000


def _tables(text: str) -> list[str]:
    """Every markdown table (consecutive lines starting with '|') of ``text``."""
    return [m.group(0).strip() for m in re.finditer(r"(?:^\|.*\n?)+", text, flags=re.MULTILINE)]


def _figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def _results_tables() -> dict[str, str]:
    """Table -> the results file (relative to benchmarks/results) it comes from."""
    sources = {}
    for md in sorted(RESULTS.rglob("*.md")):
        for table in _tables(md.read_text()):
            sources[table] = md.relative_to(RESULTS).as_posix()
    return sources


def _headline_table() -> str:
    spec = importlib.util.spec_from_file_location("headline", ROOT / "benchmarks" / "headline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.headline_table()


def _figure_tables(text: str) -> list[str]:
    return [t for t in _tables(text) if "%" in t.splitlines()[0]]


def test_readme_is_short():
    assert len(README) <= README_LIMIT, f"README.md has {len(README)} characters (at most {README_LIMIT})"


@pytest.mark.parametrize("where", ["README.md", *PAGES])
def test_tables_of_figures_come_from_results_files(where):
    text = README if where == "README.md" else PAGES[where]
    sources, headline = _results_tables(), _headline_table()
    for table in _figure_tables(text):
        assert table in sources or table == headline, (
            f"{where}: a table of figures that is neither a table of benchmarks/results/*.md nor "
            f"benchmarks/headline.py's table:\n{table[:400]}"
        )


def test_readme_shows_the_headline_table():
    assert _headline_table() in README, "README's headline table differs from `python benchmarks/headline.py`"


@pytest.mark.parametrize("md", sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.md")))
def test_results_tables_are_in_the_docs(md):
    everything = "\n".join(PAGES.values())
    for table in _tables((RESULTS / md).read_text()):
        assert table in everything, f"{md}: its table is missing from (or differs in) the pages of docs/"


def test_main_job_output_is_the_recorded_one():
    recorded = (RESULTS / "main_job.txt").read_text().strip()
    assert recorded in README, "README's main-job output differs from benchmarks/results/main_job.txt"
    assert recorded in PAGES["getting-started.md"], "docs/getting-started.md's main-job output differs"


@pytest.mark.parametrize("txt", sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.txt")))
def test_recorded_outputs_are_in_the_docs(txt):
    """A recorded command output (results/*.txt) is shown verbatim on some page of docs/."""
    recorded = (RESULTS / txt).read_text().strip()
    assert any(recorded in text for text in PAGES.values()), f"{txt}: not shown verbatim in docs/"


def test_results_files_record_their_commit():
    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        commit = data.get("commit") or data.get("config", {}).get("commit")
        assert commit and re.fullmatch(r"[0-9a-f]{40}", commit), path.name
        dirty = data.get("dirty", data.get("config", {}).get("dirty"))
        assert dirty is False, f"{path.name} was produced from uncommitted code"


def test_benchmark_rows_record_their_configuration():
    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        for row in data.get("rows", []):
            if row.get("calibration_seconds") is not None:  # a quantized row (not FP32)
                qconfig = row.get("qconfig") or data["qconfig"]  # the row's, or the one every row shares
                assert set(qconfig["roles"]) >= {"weight", "post_softmax", "post_gelu"}, path.name


def _check_figure(path: Path, where: str, link: str) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{where}: {link} is not a PNG file"
    assert path.resolve().is_relative_to(RESULTS.resolve()), f"{where}: {link} is not under benchmarks/results"
    beside = sorted(path.parent.glob("*.json"))
    assert beside, f"{where}: {link}: no results JSON beside it"
    commits = [json.loads(p.read_text()).get("commit") or json.loads(p.read_text()).get("config", {}).get("commit")
               for p in beside]
    assert any(re.fullmatch(r"[0-9a-f]{40}", str(c)) for c in commits), f"{where}: {link}: no commit recorded beside it"
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True)
        assert tracked.returncode == 0, f"{where}: {link} is not committed"


def test_readme_figures_come_from_results_folders():
    images = _figures(README)
    assert images, "the README shows no figure"
    for link in images:
        _check_figure(ROOT / link, "README.md", link)


def test_docs_figures_come_from_results_folders():
    shown = 0
    for page, text in PAGES.items():
        for link in _figures(text):
            virtual = os.path.normpath(os.path.join(os.path.dirname(page), link)).replace(os.sep, "/")
            assert virtual.startswith(FIGURE_URI), f"docs/{page}: figure {link} is not under {FIGURE_URI}"
            _check_figure(RESULTS / virtual[len(FIGURE_URI):], f"docs/{page}", link)
            shown += 1
    assert shown, "the documentation shows no figure"


def test_readme_links_resolve():
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if not re.match(r"[a-z]+://", link):
            assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools: pip install -e '.[docs]' (./scripts/setup.sh does)")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file(), "the CLI reference was not generated"


def _command_lines(text: str) -> list[str]:
    """Every ``vitquant ...`` command of the ```bash blocks of ``text`` (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("vitquant "):
                commands.append(line)
    return commands


@pytest.mark.parametrize("where", ["README.md", *PAGES])
def test_example_commands_parse(where):
    """Every example command line of the README and the docs is accepted by the real parser."""
    import shlex

    from vitquant import cli

    for line in _command_lines(README if where == "README.md" else PAGES[where]):
        argv = shlex.split(line)[1:]
        try:
            if cli._is_seed_form(argv):
                cli._seed_parser().parse_args(argv)
            else:
                cli.build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")
