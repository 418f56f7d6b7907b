"""Carry a result command's run folder across working sessions, whose runs/ does not survive.

snapshot.py save RUN DIR
    Pack runs/RUN into DIR/snapshot/run.tar.xz, to be committed with the result: everything but the rounds' prefix
    states (rollouts-k.states/, hundreds of MB: only the reward and V_k fits read them, and the fits are packed; a
    round stopped before its fit computes them again), the run's lock and the reward classifier's copy of the
    policy's weights (`_derived`); a sweep's folder (RUN = sweeps/NAME) likewise, cell by cell. AlpacaEval's
    licence: no prompt text is committed. So the records' prompts are left out (null), and so is every generated
    text that its token ids give back exactly (a reply may quote its prompt); each record is checked to come back
    whole, and the pack is refused if any prompt or reference answer text is still in it.
snapshot.py load RUN DIR
    Unpack DIR's pack into runs/RUN (never over an existing folder): the prompts put back by id from the cached
    default prompts and runs/task1-prompts/fit.jsonl (task 1's training prompts), the texts decoded from their token
    ids by the run's policy tokenizer, the classifier's weights written again.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from spi_align.config import DataConfig
from spi_align.core.records import Prompt
from spi_align.data.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = ("run.lock",)  # and every rollouts-k.states/, and `_derived` files
REWARD_DIR = "reward_model"
KEY = 24  # a prompt text shorter than this is too common a phrase to be told from a reply's own words

Decode = Callable[[list[int]], str]


def prompt_texts(default: list[Prompt]) -> dict[str, str]:
    """id -> prompt text of every prompt a result command's run reads: the 805 `default` prompts (both splits) and
    task 1's training prompts (runs/task1-prompts/fit.jsonl, where make_prompts.py wrote it)."""
    texts = {p.id: p.text for p in default}
    fit = ROOT / "runs" / "task1-prompts" / "fit.jsonl"
    for line in fit.read_text().splitlines() if fit.is_file() else []:
        row = json.loads(line)
        texts[str(row["id"])] = row["prompt"]
    return texts


def decoder(run: Path) -> Decode:
    """Token ids -> text as the run's policy decoded them (special tokens skipped); a sweep's folder: its first
    cell's policy."""
    from transformers import AutoTokenizer

    from spi_align.data.assets import embedded_model_dir

    config = run / "config.yaml" if (run / "config.yaml").is_file() else min(run.rglob("config.yaml"))
    spec = (yaml.safe_load(config.read_text()).get("policy") or {}).get("model", "default")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(spec) or spec)
    return lambda ids: tokenizer.batch_decode([ids], skip_special_tokens=True)[0]


def strip(record: dict[str, Any], decode: Decode) -> dict[str, Any]:
    """`record` as packed: no prompt, no text its token ids give back (candidates' and the trace's chunks), the
    response as the candidate whose text it is."""
    out = copy.deepcopy(record)
    if "prompt" in out:  # a judgement record (frontier-judge.jsonl) has none
        out["prompt"] = None
    candidates = out.get("candidates") or []
    for c in candidates:
        if isinstance(c.get("text"), str) and "token_ids" in c and decode(c["token_ids"]) == c["text"]:
            c["text"] = None
    response = record.get("response")
    for j, c in enumerate(record.get("candidates") or []):
        if isinstance(response, str) and c.get("text") == response and candidates[j]["text"] is None:
            out["response"] = {"candidate": j}
            break
    trace = out.get("trace")
    if isinstance(trace, dict) and isinstance(trace.get("text"), list) and isinstance(trace.get("tokens"), list):
        trace["text"] = [
            None if isinstance(t, str) and isinstance(ids, list) and decode(ids) == t else t
            for t, ids in zip(trace["text"], trace["tokens"], strict=True)
        ]
    return out


def restore(record: dict[str, Any], decode: Decode, prompts: dict[str, str]) -> dict[str, Any]:
    """The inverse of `strip`."""
    out = copy.deepcopy(record)
    if out.get("prompt") is None and "prompt" in out:
        out["prompt"] = prompts[str(out["id"])]
    for c in out.get("candidates") or []:
        if c.get("text") is None and "token_ids" in c:
            c["text"] = decode(c["token_ids"])
    if isinstance(out.get("response"), dict):
        out["response"] = out["candidates"][out["response"]["candidate"]]["text"]
    trace = out.get("trace")
    if isinstance(trace, dict) and isinstance(trace.get("text"), list):
        trace["text"] = [decode(ids) if t is None else t for t, ids in zip(trace["text"], trace["tokens"], strict=True)]
    return out


def strings(node: object) -> list[str]:
    """Every string in a record."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def finder(texts: list[str]) -> Callable[[str], str | None]:
    """A function returning the first of `texts` found inside a string, in one pass over it: every window of
    KEY characters is looked up among the texts' first KEY characters (a set), and only a hit is compared whole."""
    by_start: dict[str, list[str]] = {}
    for t in texts:
        by_start.setdefault(t[:KEY], []).append(t)

    def find(text: str) -> str | None:
        for i in range(len(text) - KEY + 1):
            for t in by_start.get(text[i : i + KEY], ()):
                if text.startswith(t, i):
                    return t
        return None

    return find


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _derived(run: Path, rel: Path) -> bool:
    """Whether `rel` is the transformers classifier copy of a reward head trained on the policy's frozen backbone
    (reward: train saves both in a run's, or a sweep cell's, reward_model/; the run reloads the head on the policy,
    and `load` writes the copy again): the policy's weights, hundreds of MB, that the pack leaves out."""
    spec = run / rel.parent / "spi_reward.json"
    return (
        rel.name == "model.safetensors"
        and rel.parent.name == REWARD_DIR
        and spec.is_file()
        and json.loads(spec.read_text()).get("backbone") != "."
    )


def _classifiers_again(run: Path) -> None:
    """Write `_derived`'s classifier weights again from the head and the policy's backbone it names (the packed
    config and tokenizer files are kept as they were saved)."""
    from spi_align.scoring.reward_model import RewardModel

    for spec in run.rglob(f"{REWARD_DIR}/spi_reward.json"):
        folder = spec.parent
        if not (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            with tempfile.TemporaryDirectory(dir=run) as tmp:
                RewardModel.load(folder).save_classifier(tmp)
                (Path(tmp) / "model.safetensors").replace(folder / "model.safetensors")


def _packed(run: Path, rel: Path) -> bool:
    return not any(part in LEFT_OUT or part.endswith(".states") for part in rel.parts) and not _derived(run, rel)


def save(run: Path, pack: Path) -> None:
    if not run.is_dir():
        sys.exit(f"snapshot.py: no {run.relative_to(ROOT)} to save")
    default = load_prompts(DataConfig(split="all", limit=None))
    prompts = prompt_texts(default)
    references = [p.reference or "" for p in default]
    find = finder([t for t in [*prompts.values(), *references] if len(t) >= KEY])
    decode = decoder(run)
    pack.parent.mkdir(parents=True, exist_ok=True)
    tmp = pack.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for path in sorted(run.rglob("*")):
            rel = path.relative_to(run)
            if not path.is_file() or not _packed(run, rel):
                continue
            data = path.read_bytes()
            text = "" if path.suffix == ".safetensors" else data.decode("utf-8", errors="ignore")
            if path.suffix == ".jsonl":
                records = [json.loads(line) for line in data.splitlines() if line.strip()]
                packed = [strip(r, decode) for r in records]
                back = next(
                    (
                        i
                        for i, (r, p) in enumerate(zip(records, packed, strict=True))
                        if restore(p, decode, prompts) != r
                    ),
                    None,
                )
                if back is not None:
                    tmp.unlink()
                    sys.exit(f"snapshot.py: {rel}'s record {back} does not come back whole from its pack: not packed")
                data = _jsonl(packed)
                text = "\n".join(s for r in packed for s in strings(r))
            found = find(text)
            if found is not None:
                tmp.unlink()
                sys.exit(f"snapshot.py: {rel} holds a prompt or reference text ({found[:40]!r}...): not packed")
            info = tarfile.TarInfo(f"{run.name}/{rel}")
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(pack)
    print(f"{pack.relative_to(ROOT)}: {pack.stat().st_size / 1e6:.1f} MB")


def load(run: Path, pack: Path) -> None:
    if run.exists():
        sys.exit(f"snapshot.py: {run.relative_to(ROOT)} exists; move it away first")
    if not pack.is_file():
        print(f"snapshot.py: nothing saved in {pack.parent.parent.name} yet, the run starts afresh", file=sys.stderr)
        return
    prompts = prompt_texts(load_prompts(DataConfig(split="all", limit=None)))
    tmp = run.with_name(f"{run.name}.loading")
    with tarfile.open(pack, "r:xz") as tar:
        members = [(Path(*Path(m.name).parts[1:]), tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    for rel, data in members:
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    decode = decoder(tmp)
    for rel, data in members:
        if rel.suffix == ".jsonl":
            records = [json.loads(line) for line in data.splitlines() if line.strip()]
            (tmp / rel).write_bytes(_jsonl([restore(r, decode, prompts) for r in records]))
    _classifiers_again(tmp)
    tmp.replace(run)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("save", "load"):
        sys.exit(__doc__)
    action, name, folder = sys.argv[1:]
    run, pack = ROOT / "runs" / name, ROOT / folder / "snapshot" / "run.tar.xz"
    (save if action == "save" else load)(run, pack)


if __name__ == "__main__":
    main()
