"""Tables for people, one printer per medium for every command and report: aligned plain text (terminal),
Markdown (report.md, the studies' table.md) and CSV files, and the one name each model goes by in them
(``model_label``)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

from qwave import atomic
from qwave.errors import FormatError
from qwave.formats import QuantPlan, get_format

NUMBER = re.compile(r"[-±]?\d")  # a cell that starts like a number is set to the right


def cell(value) -> str:
    """A table cell: floats with 3 decimals (1 from 1000 up, 3 significant digits under 0.001), anything else as
    ``str``."""
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def text_table(rows: list[dict], columns: Sequence[str]) -> str:
    """Plain aligned text table of ``columns`` of ``rows``: numbers to the right, words to the left."""
    cells = [list(columns)] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    right = [all(row[i] in ("", "-") or NUMBER.match(row[i]) for row in cells[1:]) for i in range(len(columns))]
    return "\n".join("  ".join((c.rjust if r else c.ljust)(w) for c, w, r in zip(row, widths, right, strict=True))
                     .rstrip() for row in cells)


def markdown_table(header: Sequence[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, rows: list[dict], columns: Sequence[str]) -> None:
    """``columns`` of ``rows`` as a CSV file (a missing cell empty, other keys left out), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def model_label(name: str, weight_only: bool = False) -> str:
    """A model as people name it in tables, plots and reports (config keys stay as they are): ``8`` -> ``int8``,
    ``4`` -> ``int4 (W4A8)``, ``bitnet`` -> ``ternary (W1.58A8)``, ``1`` -> ``binary``, ``ptq8`` -> ``int8 PTQ``,
    ``1-1-8`` -> ``binary-binary-int8``; with ``weight_only`` the integer and ternary formats say ``(W4, float
    activations)``. Names that are no format (``moe``) are returned unchanged."""
    key = str(name).strip()
    try:
        plan = QuantPlan.parse(key)
    except FormatError:
        return key
    names = plan.formats
    if len(names) > 1:
        label = "-".join(names)
    else:
        fmt = get_format(names[0])
        weights = "1.58" if names[0] == "ternary" else f"{fmt.bits:g}"
        if fmt.activations != "int8":
            label = names[0]
        elif weight_only:
            label = f"{names[0]} (W{weights}, float activations)"
        else:
            label = names[0] if names[0] == "int8" else f"{names[0]} (W{weights}A8)"
    return f"{label} PTQ" if plan.method == "ptq" else label
