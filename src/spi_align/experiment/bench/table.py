"""Rendering a bench: the methods table (medians [min–max]) and the targets table, for the terminal and markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from spi_align.experiment.bench.targets import Check

METHOD_COLUMNS = (
    "method",
    "wall s",
    "× BoN",
    "tokens",
    "forward tokens",
    "tok/s",
    "prefill",
    "decode",
    "value",
    "reward",
    "other",
    "peak RSS MiB",
)
TARGET_COLUMNS = ("target", "what", "measured", "limit", "met", "note")


def _spread(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def method_rows(
    summary: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]], memory: dict[str, dict[str, Any]]
) -> list[list[str]]:
    """One row per method: medians [min–max] over repeats; phases are median seconds."""
    rows = []
    for key, s in summary.items():
        phases = s["phases_s"]
        mem = memory.get(key)
        rows.append(
            [
                key,
                _spread(s["wall_s"]),
                _spread(ratios[key], 3),
                f"{s['tokens']['median']:.0f}",
                f"{s['forward_tokens']['median']:.0f}" if "forward_tokens" in s else "n/a",
                _spread(s["tokens_per_s"], 0),
                *(f"{phases[p]['median']:.2f}" for p in ("prefill", "decode", "value", "reward", "other")),
                "" if mem is None else f"{mem['peak_rss_mb']:.0f} (+{mem['increment_mb']:.0f})",
            ]
        )
    return rows


def target_rows(checks: Sequence[Check]) -> list[list[str]]:
    mark = {True: "yes", False: "NO", None: "—"}
    return [[c.target, c.what, c.measured, c.limit, mark[c.met], c.note] for c in checks]


def rich_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
