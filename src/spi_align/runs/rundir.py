"""Run directories: each run gets its own folder; every artefact is written atomically when it is ready.

A rerun resumes a run only with the same settings. The saved `config.yaml` is compared with the new config as
resolved settings, not as text: the saved file is validated by the current config model, so a key it lacks (a field
added since) takes the value the model gives it, its default or what a validator derives from the keys the file
has; only keys that then differ refuse the rerun, and the refusal names them. Where the run lives (`name`,
`run_dir`) is no setting of the run.

One command at a time: `start` takes a lock on the run (`.<name>.lock` beside its folder, so a run that fails before
its first step still leaves no folder), held until `close()` or until the `RunDir` is gone; a second process is
refused in one line naming the holder (`.<name>.owner`). RunDirs of one process share the lock.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from spi_align.config import to_yaml
from spi_align.core.errors import SpiError
from spi_align.runs.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    cut_file,
    staged_folder,
)

PLACE = ("name", "run_dir")
"""Top-level config keys that say where a run lives, not how it runs: never a difference between two configs."""
_UNSET = object()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def config_changes(saved: Path, config: BaseModel) -> list[str]:
    """The settings that `config` sets otherwise than the config saved in `saved`, as 'dotted.key: saved → new'.

    The saved file is resolved by `config`'s model first, so a key it lacks is no difference unless the value the
    model gives it (its default, or what a validator derives from the saved keys) differs from the new one.
    """
    try:
        resolved = type(config).model_validate(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        reason = str(exc).splitlines()[0] if isinstance(exc, yaml.YAMLError) else _first_error(exc)
        return [f"{saved.name} is not a config these settings can read ({reason})"]
    old, new = (_settings(c) for c in (resolved, config))
    return [
        f"{k}: {_shown(old.get(k, _UNSET))} → {_shown(new.get(k, _UNSET))}"
        for k in dict.fromkeys([*new, *old])
        if old.get(k, _UNSET) != new.get(k, _UNSET)
    ]


def _settings(config: BaseModel) -> dict[str, Any]:
    """Every setting of `config` by its dotted key, where the run lives left out."""
    return {k: v for k, v in _leaves(config.model_dump(mode="json")).items() if k not in PLACE}


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    text = "unset" if value is _UNSET else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


class RunDir:
    """One run's folder: resolved config, outputs and metrics side by side."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.path = Path(root) / slug(name)
        self._config: str | None = None
        self._unlock: weakref.finalize | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def start(self, config: BaseModel) -> None:
        """Check the resolved config against the run's (`config_changes`); a rerun must use the same settings to
        resume this run, and then records its config (with any key added since) in place of the saved one.

        Nothing is written yet: the folder and its `config.yaml` appear with the first finished step, so a run
        that fails before any (a missing prompt file, say) leaves nothing behind. A folder that holds only a
        `config.yaml` (no finished step) is taken over by the new config.
        """
        self.lock()
        saved = self.file("config.yaml")
        if saved.exists() and self._has_steps() and (changes := config_changes(saved, config)):
            self.close()
            raise SpiError(
                f"run directory {self.path} holds a run with another config ({'; '.join(changes)}); "
                "pass name=... for a new run or delete that directory"
            )
        self._config = to_yaml(config)

    def lock(self) -> None:
        """Hold this run's lock until `close()` (or until this object is gone); SpiError naming the process that
        holds it otherwise. Other RunDirs of this process on the same folder share it."""
        if self._unlock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path.parent / f".{self.path.name}.lock", timeout=0, is_singleton=True, thread_local=False)
        owner = self.path.parent / f".{self.path.name}.owner"
        held_here = lock.is_locked
        try:
            lock.acquire()
        except Timeout:
            holder = owner.read_text(encoding="utf-8").strip() if owner.is_file() else "unknown"
            raise SpiError(
                f"run directory {self.path} is in use by another process ({holder}); "
                "wait for it to finish, or pass name=... for a new run"
            ) from None
        if not held_here:
            command = " ".join(" ".join(sys.argv).split())[:200]
            atomic_write_text(owner, f"pid {os.getpid()} on {socket.gethostname()}: {command}\n")
        self._unlock = weakref.finalize(self, _unlock, lock, owner)

    def close(self) -> None:
        """Let go of this run's lock (taken by `start`)."""
        if self._unlock is not None:
            self._unlock()
            self._unlock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


def _unlock(lock: FileLock, owner: Path) -> None:
    if lock.lock_counter == 1:  # the last hold in this process: the note goes before another process can take it
        owner.unlink(missing_ok=True)
    lock.release()
