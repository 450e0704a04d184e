"""Tables for people, one printer per medium for every command and report: aligned plain text (terminal) and
Markdown (report.md, the studies' table.md)."""

from __future__ import annotations

from collections.abc import Sequence


def cell(value) -> str:
    """A table cell: floats with 3 decimals (1 from 1000 up), anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1000 else f"{value:.1f}"
    return str(value)


def text_table(rows: list[dict], columns: Sequence[str]) -> str:
    """Plain aligned text table of ``columns`` of ``rows``."""
    cells = [list(columns)] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def markdown_table(header: Sequence[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
