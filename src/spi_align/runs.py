"""Run directories: each run gets its own folder; every artefact is written atomically when it is ready."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spi_align.config import to_yaml
from spi_align.errors import SpiError


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class RunDir:
    """One run's folder: resolved config, outputs and metrics side by side."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.path = Path(root) / slug(name)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def start(self, config: BaseModel) -> None:
        """Record the resolved config; a rerun must use the same config to resume this run."""
        text = to_yaml(config)
        saved = self.file("config.yaml")
        if saved.exists() and saved.read_text(encoding="utf-8") != text:
            raise SpiError(
                f"run directory {self.path} holds a run with another config; "
                "pass name=... for a new run or delete that directory"
            )
        atomic_write_text(saved, text)

    def write_json(self, name: str, data: Any) -> Path:
        atomic_write_json(self.file(name), data)
        return self.file(name)

    def write_jsonl(self, name: str, records: Iterable[dict[str, Any]]) -> Path:
        atomic_write_jsonl(self.file(name), records)
        return self.file(name)

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.file(name), text)
        return self.file(name)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))
