"""A finished run directory's answers: which methods it evaluated and what each one answered, prompt by prompt.

`spi run` saves each evaluated method's choices as `eval-<method>.jsonl` (one record per eval prompt: id, prompt,
response, candidates, and the tree a search recorded, `trace`, in the same line). The judge, the AlpacaEval export
and `spi inspect` read them from here, and need nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spi_align.core.errors import SpiError
from spi_align.runs.files import read_appended_jsonl

EVAL_PREFIX = "eval-"


@dataclass(frozen=True)
class Answer:
    """One method's chosen response to one prompt."""

    id: str
    instruction: str
    output: str


def open_run(path: str | Path) -> Path:
    """The run directory, checked to hold evaluated methods; SpiError otherwise."""
    run = Path(path)
    if not run.is_dir():
        raise SpiError(f"run directory not found: {run}")
    if not list_methods(run):
        raise SpiError(f"{run} holds no evaluated methods (no eval-*.jsonl): is it a finished `spi run` directory?")
    return run


def list_methods(run: Path) -> list[str]:
    """Methods with saved eval answers, in the order of results.json when there is one, else by name."""
    found = {p.name[len(EVAL_PREFIX) : -len(".jsonl")] for p in run.glob(f"{EVAL_PREFIX}*.jsonl")}
    order: list[str] = []
    results = run / "results.json"
    if results.is_file():
        order = [m for m in json.loads(results.read_text(encoding="utf-8")).get("results", {}) if m in found]
    return order + sorted(found - set(order))


def pick_methods(run: Path, wanted: list[str] | None) -> list[str]:
    """`wanted` checked against what the run holds (None = all of them)."""
    have = list_methods(run)
    if not wanted:
        return have
    missing = [m for m in wanted if m not in have]
    if missing:
        raise SpiError(f"{run} has no method {', '.join(missing)} (it has {', '.join(have)})")
    return wanted


def load_answers(run: Path, method: str) -> list[Answer]:
    """The method's answers in saved order (`load_records`)."""
    return [Answer(id=str(r["id"]), instruction=r["prompt"], output=r["response"]) for r in load_records(run, method)]


def load_records(run: Path, method: str) -> list[dict[str, Any]]:
    """The method's whole records (candidates, and the search's `trace` when it recorded one) in saved order, one
    per prompt id (a resumed run's duplicates keep the first). A run still being written may end in a torn line: it
    is left out, as a resume would drop it."""
    path = run / f"{EVAL_PREFIX}{method}.jsonl"
    if not path.is_file():
        raise SpiError(f"{run} has no method {method} (it has {', '.join(list_methods(run))})")
    seen: dict[str, dict[str, Any]] = {}
    for record in read_appended_jsonl(path)[0]:
        seen.setdefault(str(record["id"]), record)
    return list(seen.values())
