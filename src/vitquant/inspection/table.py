"""What ``vitquant inspect`` shows: summary lines and one row per quantization point or op, as plain data
(``--json``), a fixed-width text table or a markdown table; and the compact text of parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitquant.errors import ConfigError

__all__ = ["Inspection", "compact_number", "compact_params", "compact_range", "format_table", "select_rows"]


@dataclass
class Inspection:
    """One inspected file: ``source`` ("report" or "program"), summary lines, the rows as plain data and
    as text cells under ``columns``."""

    path: str
    source: str
    summary: list[str]
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    cells: list[list[str]] = field(default_factory=list)

    def format(self, markdown: bool = False) -> str:
        """The summary lines, a blank line, then the table (markdown or fixed-width text)."""
        return "\n".join([*self.summary, "", format_table(self.columns, self.cells, markdown)]) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "source": self.source, "summary": list(self.summary), "rows": self.rows}


def format_table(columns: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """``cells`` under ``columns``: a markdown table, or left-aligned columns two spaces apart."""
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])
    widths = [max(map(len, column)) for column in zip(columns, *cells)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [columns, *cells])


def select_rows(rows: list[dict[str, Any]], key: str, wanted: str | None, flag: str, path: str) -> list[dict[str, Any]]:
    """The rows whose ``key`` is ``wanted`` (all when None); :class:`ConfigError` naming the values
    present when none is."""
    if wanted is None:
        return rows
    chosen = [row for row in rows if row.get(key) == wanted]
    if not chosen:
        present = ", ".join(sorted({str(row.get(key)) for row in rows})) or "none"
        raise ConfigError(f"{flag} {wanted!r}: nothing of that {key} in {path}; present: {present}")
    return chosen


def compact_number(value: Any) -> str:
    """An int or bool as it is, a float to 4 significant digits, None (not finite) as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, ".4g") if math.isfinite(value) else str(value)
    return str(value)


def compact_range(stats: dict[str, Any]) -> str:
    """``min..max`` of a :func:`~vitquant.quantizers.summary.tensor_stats` dict, one value when they agree."""
    low, high = stats.get("min"), stats.get("max")
    return compact_number(low) if low == high else f"{compact_number(low)}..{compact_number(high)}"


def _count(shape: Any) -> str:
    return str(math.prod(shape)) if isinstance(shape, list) and all(isinstance(n, int) for n in shape) else "?"


def _compact_value(value: Any) -> str:
    """`` 0.0123`` for one number, ``[N] min..max`` for a tensor of N elements."""
    return f"[{_count(value.get('shape'))}] {compact_range(value)}" if isinstance(value, dict) else " " + compact_number(value)


def compact_params(params: Any) -> str:
    """A :func:`~vitquant.quantizers.summary.summarize_state` dict in one line: its meta other than the
    bit width, then every tensor (``scale 0.0123``, ``scale[192] 0.0011..0.052``); ``-`` when absent."""
    if not isinstance(params, dict):
        return "-"
    meta = params.get("meta") if isinstance(params.get("meta"), dict) else {}
    tensors = params.get("tensors") if isinstance(params.get("tensors"), dict) else {}
    parts = [f"{name} {compact_number(value)}" for name, value in meta.items() if name != "bits"]
    parts += [f"{name}{_compact_value(value)}" for name, value in tensors.items()]
    return ", ".join(parts) or "-"
