"""Carry command.sh's run folder (runs/t1e) across working sessions, whose runs/ does not survive.

    snapshot.py save   pack runs/t1e into snapshot/run.tar.xz (to be committed): everything but round 0's prefix
                       states (rollouts-0.states/, hundreds of MB: only the reward and V_0 fits read them, and both
                       are packed) and the run's lock. The records' prompt texts are left out (null; AlpacaEval's
                       licence: no prompt text is committed) and the pack is refused if any is still in it.
    snapshot.py load   unpack it into runs/t1e (never over an existing folder), the prompt texts put back by id from
                       the cached default prompts (the eval split) and runs/task1-prompts/fit.jsonl.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

from spi_align.config import DataConfig
from spi_align.data.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "runs" / "t1e"
PACK = Path(__file__).resolve().parent / "snapshot" / "run.tar.xz"
LEFT_OUT = ("rollouts-0.states", "run.lock")
GENERATED = ("text", "response")


def prompt_texts() -> dict[str, str]:
    """id -> prompt text of every prompt the run reads (the 200 eval prompts and the fit training prompts)."""
    texts = {p.id: p.text for p in load_prompts(DataConfig(split="eval", limit=200))}
    fit = ROOT / "runs" / "task1-prompts" / "fit.jsonl"
    for line in fit.read_text().splitlines():
        row = json.loads(line)
        texts[str(row["id"])] = row["prompt"]
    return texts


def _lines(data: bytes, change) -> bytes:
    return b"".join(json.dumps(change(json.loads(line)), ensure_ascii=False).encode() + b"\n" for line in data.splitlines() if line.strip())


def _written(node: object) -> object:
    """A record without what the policy generated ("text", "response": a reply may quote its prompt): the part
    that must hold no prompt text."""
    if isinstance(node, dict):
        return {k: _written(v) for k, v in node.items() if k not in GENERATED}
    if isinstance(node, list):
        return [_written(v) for v in node]
    return node


def save() -> None:
    if not RUN.is_dir():
        sys.exit(f"snapshot.py: no {RUN.relative_to(ROOT)} to save")
    texts = [t for t in prompt_texts().values() if len(t) >= 24]
    PACK.parent.mkdir(parents=True, exist_ok=True)
    tmp = PACK.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for path in sorted(RUN.rglob("*")):
            rel = path.relative_to(RUN)
            if not path.is_file() or rel.parts[0] in LEFT_OUT:
                continue
            data = path.read_bytes()
            text = data.decode("utf-8", errors="ignore")
            if path.suffix == ".jsonl":
                data = _lines(data, lambda r: {k: None if k == "prompt" else v for k, v in r.items()})
                text = json.dumps([_written(json.loads(line)) for line in data.splitlines()])
            found = next((t for t in texts if t in text), None)
            if found is not None:
                tmp.unlink()
                sys.exit(f"snapshot.py: {rel} holds a prompt text ({found[:40]!r}...): not packed")
            info = tarfile.TarInfo(f"t1e/{rel}")
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(PACK)
    print(f"{PACK.relative_to(ROOT)}: {PACK.stat().st_size / 1e6:.1f} MB")


def _text(texts: dict[str, str], record: dict, key: str, value: object) -> object:
    """A record's value, its prompt text put back where `save` left it out (None)."""
    return texts[str(record["id"])] if key == "prompt" and value is None else value


def load() -> None:
    if RUN.exists():
        sys.exit(f"snapshot.py: {RUN.relative_to(ROOT)} exists; move it away first")
    if not PACK.is_file():
        print("snapshot.py: nothing saved yet, command.sh starts from scratch", file=sys.stderr)
        return
    texts = prompt_texts()
    tmp = RUN.with_name("t1e.loading")
    with tarfile.open(PACK, "r:xz") as tar:
        for member in tar.getmembers():
            rel = Path(member.name).relative_to("t1e")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if rel.suffix == ".jsonl":
                data = _lines(data, lambda r: {k: _text(texts, r, k, v) for k, v in r.items()})
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    tmp.replace(RUN)


if __name__ == "__main__":
    {"save": save, "load": load}.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: sys.exit(__doc__))()
