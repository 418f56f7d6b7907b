"""Prompts in, responses in: the default AlpacaEval prompts or a user's JSONL/JSON/CSV/parquet file.

A file's prompt column is the first of `prompt`, `instruction`, `text`, `question`; its optional reference
column the first of `reference`, `output`, `reference_output`, `answer`; its optional `id` column names each
row (else the row index). Every problem is one `SpiError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spi_align.config import DataConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.assets import default_prompts_file
from spi_align.runs.files import read_jsonl

PROMPT_COLUMNS = ("prompt", "instruction", "text", "question")
REFERENCE_COLUMNS = ("reference", "output", "reference_output", "answer")
RESPONSE_COLUMN = "response"
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompts(cfg: DataConfig) -> list[Prompt]:
    """The prompts `cfg` asks for, in a fixed order, cut to `cfg.limit`.

    'default' gives the AlpacaEval side `cfg.split` of the stored split (drawn once with seed 0, so every run
    judges on the same eval prompts whatever its own seed). A file is used whole, in file order.
    """
    if cfg.prompts == "default":
        prompts = _default_prompts(cfg.split)
    else:
        rows, path = _read_rows(cfg.prompts)
        prompts = [prompt for prompt, _ in _parse_rows(rows, path, response=False)]
    return prompts[: cfg.limit] if cfg.limit else prompts


def load_responses(path: str | Path) -> list[tuple[Prompt, str]]:
    """(prompt, response) pairs from a file with a prompt column and a `response` column, for `spi score`."""
    rows, path = _read_rows(path)
    return _parse_rows(rows, path, response=True)


def _default_prompts(split: str) -> list[Prompt]:
    file = default_prompts_file()
    by_id: dict[str, Prompt] = {}
    with file.open() as f:
        for line in f:
            row = json.loads(line)
            by_id[row["id"]] = Prompt(id=row["id"], text=row["prompt"], reference=row.get("reference"))
    if split == "all":
        return list(by_id.values())
    stored = json.loads((file.parent / "split.json").read_text())
    return [by_id[i] for i in stored[split]]


def _read_rows(path: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """All rows of a JSONL/JSON/CSV/parquet file, read with `datasets`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpiError(f"prompts file not found: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SpiError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(FORMATS)})")
    if path.stat().st_size == 0:
        raise SpiError(f"{path}: file is empty")
    rows = _load_with_datasets(kind, path)
    if not rows:
        raise SpiError(f"{path}: file holds no rows")
    return rows, path


def _load_with_datasets(kind: str, path: Path) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    # A private, throw-away cache: reading a user's file leaves nothing behind in ~/.cache/huggingface.
    with tempfile.TemporaryDirectory(prefix="spi-data-") as tmp:
        try:
            table = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=tmp)
        except Exception as exc:  # datasets raises many types; the user needs one line
            if "corresponds to no data" in str(exc):  # e.g. a CSV with only its header row
                return []
            if kind == "json":
                return _load_json_fallback(path, exc)
            raise SpiError(f"{path}: cannot read it as {kind} ({_first_line(exc)})") from None
        return table.to_list()


def _load_json_fallback(path: Path, exc: Exception) -> list[dict[str, Any]]:
    """A JSON file datasets refuses (e.g. a top-level list with ragged rows): read it with `json`. A JSONL file is
    read line by line, so a bad line is named."""
    try:
        data: Any = read_jsonl(path) if path.suffix.lower() == ".jsonl" else json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SpiError(f"{path}: cannot read it as JSON/JSONL ({_first_line(exc)})") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise SpiError(f"{path}: JSON must be a list of objects (or one object per line)")
    return data


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _pick(columns: list[str], choices: tuple[str, ...]) -> str | None:
    return next((c for c in choices if c in columns), None)


def _parse_rows(rows: list[dict[str, Any]], path: Path, response: bool) -> list[tuple[Prompt, str]]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    prompt_col = _pick(columns, PROMPT_COLUMNS)
    if prompt_col is None:
        raise SpiError(
            f"{path}: no prompt column (expected one of {', '.join(PROMPT_COLUMNS)}; "
            f"it has {', '.join(columns) or 'none'})"
        )
    if response and RESPONSE_COLUMN not in columns:
        raise SpiError(f"{path}: no '{RESPONSE_COLUMN}' column (it has {', '.join(columns)})")
    ref_col = _pick(columns, REFERENCE_COLUMNS)
    out: list[tuple[Prompt, str]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        text = _text(row.get(prompt_col))
        if not text.strip():
            raise SpiError(f"{path}: empty prompt in row {i} (rows count from 0)")
        pid = str(row["id"]) if row.get("id") is not None else str(i)
        if pid in seen:
            raise SpiError(f"{path}: id '{pid}' appears twice (row {i})")
        seen.add(pid)
        reference = _text(row.get(ref_col)) if ref_col else ""
        prompt = Prompt(id=pid, text=text, reference=reference or None)
        out.append((prompt, _text(row.get(RESPONSE_COLUMN)) if response else ""))
    return out


def _text(value: Any) -> str:
    """A cell as text: None (and a float NaN, as CSV readers give for blanks) become ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


HELDOUT_FRACTION = 0.2
"""The share of prompts `heldout_prompts` holds out (about a fifth)."""


def prompt_draw(prompt_id: str, seed: int, split: str = "heldout") -> float:
    """A number in [0, 1) fixed by (split, seed, prompt id) alone: a hash, so a prompt's draw never depends on which
    other prompts are present (two splits of one seed draw independently)."""
    digest = hashlib.sha256(f"{split}/{seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_prompts(prompt_ids: Iterable[str], seed: int, split: str = "heldout") -> set[str]:
    """About a fifth of the distinct prompt ids: those whose draw (`prompt_draw`) falls below `HELDOUT_FRACTION`.
    The default split gives the prompts every held-out measure of the project (value ranking, reward-model accuracy)
    is read on. A prompt's side depends only on its id, the seed and `split`, so a subset of the prompts keeps each
    prompt on the side it had in the full set. Degenerate sets keep a prompt on each side: when no id falls below,
    the lowest draw is held out; when every id of two or more does, the highest is given back."""
    ids = set(prompt_ids)
    draws = {i: prompt_draw(i, seed, split) for i in ids}
    held = {i for i, d in draws.items() if d < HELDOUT_FRACTION}
    if not held and ids:
        held = {min(ids, key=lambda i: (draws[i], i))}
    elif held == ids and len(ids) > 1:
        held -= {max(ids, key=lambda i: (draws[i], i))}
    return held


def prompt_split(prompt_ids: Iterable[str], seed: int) -> tuple[set[str], set[str], set[str]]:
    """(fit, choice, held out): the held-out prompts (`heldout_prompts`), which no choice and no fit reported on
    sees, and the rest split again, drawn independently (`split="choice"`), into about a fifth on which settings are
    chosen and the prompts fitted on while choosing."""
    ids = set(prompt_ids)
    held = heldout_prompts(ids, seed)
    choice = heldout_prompts(ids - held, seed, split="choice")
    return ids - held - choice, choice, held
