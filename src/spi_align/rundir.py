"""Run directories: each run gets its own folder; every artefact is written atomically when it is ready."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spi_align.config import to_yaml
from spi_align.errors import SpiError
from spi_align.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    cut_file,
    staged_folder,
)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class RunDir:
    """One run's folder: resolved config, outputs and metrics side by side."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.path = Path(root) / slug(name)
        self._config: str | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def start(self, config: BaseModel) -> None:
        """Check the resolved config against the run's; a rerun must use the same config to resume this run.

        Nothing is written yet: the folder and its `config.yaml` appear with the first finished step, so a run
        that fails before any (a missing prompt file, say) leaves nothing behind. A folder that holds only a
        `config.yaml` (no finished step) is taken over by the new config.
        """
        text = to_yaml(config)
        saved = self.file("config.yaml")
        if saved.exists() and saved.read_text(encoding="utf-8") != text and self._has_steps():
            raise SpiError(
                f"run directory {self.path} holds a run with another config; "
                "pass name=... for a new run or delete that directory"
            )
        self._config = text

    def _has_steps(self) -> bool:
        return any(p.name != "config.yaml" and not p.name.startswith(".") for p in self.path.iterdir())

    def commit(self) -> Path:
        """Create the folder and record the config (once): called before any artefact is written."""
        if self._config is not None:
            atomic_write_text(self.file("config.yaml"), self._config)
            self._config = None
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def write_json(self, name: str, data: Any) -> Path:
        self.commit()
        atomic_write_json(self.file(name), data)
        return self.file(name)

    def write_jsonl(self, name: str, records: Iterable[dict[str, Any]]) -> Path:
        self.commit()
        atomic_write_jsonl(self.file(name), records)
        return self.file(name)

    def append_jsonl(self, name: str, records: Iterable[dict[str, Any]]) -> Path:
        """Append records to `name` (one write, flushed to disk): a file that grows batch by batch."""
        self.commit()
        append_jsonl(self.file(name), records)
        return self.file(name)

    def cut(self, name: str, size: int) -> None:
        """Keep the first `size` bytes of `name`: what a resume drops is removed before it appends again."""
        cut_file(self.file(name), size)

    def write_text(self, name: str, text: str) -> Path:
        self.commit()
        atomic_write_text(self.file(name), text)
        return self.file(name)

    @contextmanager
    def folder(self, name: str) -> Iterator[Path]:
        """A checkpoint folder `name`, filled under a temporary name and renamed into place when the block ends."""
        self.commit()
        with staged_folder(self.file(name)) as tmp:
            yield tmp

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))
