"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``).

- ``reference/cli.md`` is generated at build time from the argparse parser of :mod:`vitquant.cli` (every
  subcommand, argument group, option, default and help text) and the registries the lists of models,
  recipes and attention schemes come from, so it cannot drift from the code.
- The figures under ``benchmarks/results/`` are published as ``results/<path>``: a page shows one with a
  link relative to ``docs/results/`` (``../results/compare_deit_tiny/attention_levels.png`` from a page one
  folder down). Nothing is copied into ``docs/``.
- Docstrings are written in reStructuredText habits: Sphinx roles (``:class:`~vitquant.qconfig.QConfig```),
  ```text <url>`_`` links and definition-list sections (a term line, then its text indented by four
  spaces) and code blocks right after a line ending in a colon. :class:`RstDocstrings`, a Griffe extension (``extensions:`` of the mkdocstrings handler), turns
  them into markdown before mkdocstrings renders them: the code span without the role, a markdown link,
  a bold term followed by its text.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_URI = RESULTS.name  # where the results figures appear in the site: results/<path>
CLI_URI = "reference/cli.md"


def results_figures() -> list[Path]:
    """Every PNG under ``benchmarks/results/``, relative to it, sorted."""
    return sorted(p.relative_to(RESULTS) for p in RESULTS.rglob("*.png"))


# ----------------------------------------------------------------------------- the CLI reference
def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    if action.nargs == "?":
        metavar = f"[{metavar}]"
    elif action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    return f"{names} `{metavar}`"


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if not action.option_strings:
        return "required" if action.nargs is None else ""
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _argument_table(actions: list[argparse.Action]) -> list[str]:
    rows = ["| argument | default | what it does |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        help_text = (action.help or "").replace("%%", "%")
        if action.choices is not None and action.metavar is not None:
            help_text += f" (one of: {', '.join(str(c) for c in action.choices)})"
        rows.append(f"| {_option_names(action)} | {_default(action)} | {_escape(help_text)} |")
    return rows if len(rows) > 2 else []


def _parser_section(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"## `{name}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        table = _argument_table(group._group_actions)
        if not table:
            continue
        title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
        lines += [f"**{title[0].upper() + title[1:]}**", "", *table, ""]
    return lines


def _listing(func) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        func()
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """The markdown of the CLI reference page, from :func:`vitquant.cli.build_parser` itself."""
    sys.path.insert(0, str(ROOT / "src"))
    import os

    os.environ.setdefault("COLUMNS", "100")  # argparse wraps usage lines at the terminal width
    from vitquant import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    lines = [
        "# Command-line reference",
        "",
        "This page is generated when the site is built, from the argument parser of `vitquant.cli` "
        "(`build_parser()`) and the registries of models, recipes and attention schemes; "
        "`vitquant <command> --help` prints the same options.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#{name}) | {_escape(helps.get(name, ''))} |" for name in sub.choices]
    lines += ["", "Errors (bad options, missing files, undecodable images, ...) print `vitquant: error: ...` "
              "and exit with status 2.", ""]
    for name, subparser in sub.choices.items():
        lines += _parser_section(name, subparser, helps.get(name, ""))
        if name == "models":
            lines += ["Output:", "", "```text", _listing(cli._list_models), "```", ""]
        elif name == "recipes":
            lines += ["Output:", "", "```text", _listing(cli._list_recipes), "```", ""]
        elif name == "schemes":
            lines += ["Output:", "", "```text", _listing(cli._list_schemes), "```", ""]
    seed = cli._seed_parser()
    lines += [
        "## The seed-compatible form",
        "",
        "Without a subcommand, the flags of the original BitLog2/RepQ-ViT scripts run `vitquant quantize` "
        f"(any of {', '.join(f'`{f}`' for f in sorted(cli._SEED_FLAGS))} selects this form):",
        "",
        "```text",
        seed.format_usage().strip(),
        "```",
        "",
        *_argument_table(seed._actions),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docstrings
_ROLE_TEXT = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):`~?([^`]+)`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<(https?://[^>]+)>`_")
_INDENT = "    "
_SECTION = re.compile(r"[A-Z][a-z]+( [a-z]+)?:$")  # a Google-style section title ("Returns:"): left alone


def rst_to_markdown(text: str) -> str:
    """A docstring's reStructuredText habits as markdown (roles, links, definition-list sections)."""
    text = _RST_LINK.sub(r"[\1](\2)", _ROLE_TEXT.sub(r"`\1`", text))
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        is_term = (
            line.strip() and not line[0].isspace() and len(line) <= 80 and i + 1 < len(lines)
            and lines[i + 1].startswith(_INDENT) and not lines[i + 1].startswith(_INDENT + " ")
            and (i == 0 or not lines[i - 1].strip()) and not line.rstrip().endswith((":", ".", ","))
            and not line.lstrip().startswith(("-", "*", "|", "#", "`", ">"))
        )
        if not is_term:
            out.append(line)
            i += 1
            # "...:" then an indented block without a blank line: a code block, which needs the blank line
            if (line.rstrip().endswith(":") and i < len(lines) and lines[i].startswith(_INDENT)
                    and not _SECTION.match(line.strip()) and not line.startswith(" ")):
                out.append("")
            continue
        out += [f"**{line.strip()}**", ""]
        i += 1
        while i < len(lines) and (lines[i].startswith(_INDENT) or not lines[i].strip()):
            if not lines[i].strip() and not (i + 1 < len(lines) and lines[i + 1].startswith(_INDENT)):
                break
            out.append(lines[i][len(_INDENT):])
            i += 1
    return "\n".join(out)


try:
    from griffe import Extension
except ImportError:  # MkDocs loads this file as hooks too; griffe comes with mkdocstrings
    Extension = object


class RstDocstrings(Extension):
    """Griffe extension: every docstring through :func:`rst_to_markdown` before it is parsed."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


# ----------------------------------------------------------------------------- MkDocs events
def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, CLI_URI, content=cli_reference()))
    for rel in results_figures():
        files.append(File(f"{RESULTS_URI}/{rel.as_posix()}", src_dir=str(RESULTS.parent),
                          dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]))
    return files


_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):(<code>)~?")


def on_page_content(html, page, config, files):
    return _ROLE.sub(r"\1", html)
