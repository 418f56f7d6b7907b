"""Atomic files and folders: readers never see half an artefact, and an interrupted writer leaves none behind.

Every artefact the library writes (run outputs, checkpoints, cached assets) goes through here: a file is
written next to its final place and renamed into it; a folder is filled under a temporary name and renamed.
A JSONL file that grows batch by batch is appended to instead (one write and an fsync per batch); a crash in
the middle of an append leaves at most a torn last line, which `read_appended_jsonl` drops. Files and folders get
the modes the umask gives (not the owner-only modes of `mkstemp` / `mkdtemp`), so a group can read a run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spi_align.core.errors import SpiError

log = logging.getLogger(__name__)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, flushed to disk, and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask. Reading it means setting one for an instant: owner-only, so a file another thread
    creates meanwhile is never more open than it asked."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, _jsonl(records))


def _jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records to a JSONL file in one write, flushed to disk before returning.

    A file hard-linked elsewhere (a sweep shares a partial method file between runs by a link) is first replaced
    by a copy of its own, so the append never grows the other run's file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_nlink > 1:
        atomic_write_bytes(path, path.read_bytes())
    with path.open("ab") as handle:
        handle.write(_jsonl(records).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def cut_file(path: Path, size: int) -> None:
    """Keep only the first `size` bytes of a file (written as a new file, so a hard-linked copy keeps its own)."""
    with path.open("rb") as handle:
        atomic_write_bytes(path, handle.read(size))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a line that is not JSON is one clear error naming the file and line."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            records.append(_record(path, number, line))
    return records


def _record(path: Path, number: int, line: str | bytes) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpiError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
    except UnicodeDecodeError:
        raise SpiError(f"{path}:{number}: not a JSON record (not UTF-8)") from None


def read_appended_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a JSONL file written by `append_jsonl`, and the byte offset where each record's line ends.

    A last line without its newline is what a crash in the middle of an append leaves: it is dropped (logged), and
    the offsets say where the complete lines end. Any other line that is not JSON is one clear error naming the
    file and line.
    """
    records: list[dict[str, Any]] = []
    ends: list[int] = []
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                log.warning("%s:%d: dropped a torn last line left by an interrupted write", path, number)
                break
            offset += len(line)
            if not line.strip():
                continue
            records.append(_record(path, number, line))
            ends.append(offset)
    return records, ends


@contextmanager
def staged_folder(final: Path, replace: bool = True, shared_modes: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `final`; when the block succeeds, rename it to `final`.

    `replace`: an existing `final` is removed first (a checkpoint rewritten); otherwise an existing one wins
    (a concurrent writer got there first, e.g. two fetches of the same asset). The folder and everything in it get
    the modes the umask gives, whatever wrote them (safetensors writes its files owner-only); `shared_modes` opens
    them to other users whatever the umask (cached assets).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        umask = 0o022 if shared_modes else _umask()
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if replace or not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
