"""Running a method over a prompt set inside a run directory: resumable batch by batch, costs recorded.

Algorithm 1 (rollouts) and the experiment harness (evaluation) both run methods this way."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from spi_align.files import read_jsonl
from spi_align.interfaces import Cost, Prompt, Search
from spi_align.rundir import RunDir

log = logging.getLogger(__name__)


def run_method(
    run: RunDir,
    key: str,
    search: Search,
    prompts: Sequence[Prompt],
    batch_size: int,
    reseed: Callable[[int], None] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], Cost]:
    """Run `search` on `prompts`, saving `<key>.jsonl` and `<key>.cost.json` after every batch.

    A rerun picks up after the last saved batch, so an interrupted run loses at most one batch. Each batch
    starts from its own seed (`reseed`), so a resumed run samples what an uninterrupted one would.
    """
    out, cost_file = f"{key}.jsonl", f"{key}.cost.json"
    records = read_jsonl(run.file(out)) if run.has(out) else []
    cost = Cost(**run.read_json(cost_file)["cost"]) if run.has(cost_file) and records else Cost()
    done = {r["id"] for r in records}
    todo = [p for p in prompts if p.id not in done]
    if todo:
        log.info("%s: %d prompts to run (%d done before)", key, len(todo), len(prompts) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        if reseed is not None:
            reseed(batch_seed(seed, key, (len(prompts) - len(todo) + start) // batch_size))
        records.extend(r.to_record() for r in search.run(batch, cost))
        run.write_jsonl(out, records)
        run.write_json(cost_file, {"cost": _cost_fields(cost)})
        log.info("%s: %d/%d prompts", key, len(prompts) - len(todo) + start + len(batch), len(prompts))
    order = {p.id: i for i, p in enumerate(prompts)}
    records = sorted((r for r in records if r["id"] in order), key=lambda r: order[r["id"]])
    return records, cost


def batch_seed(seed: int, key: str, batch: int) -> int:
    """A seed for one batch of one method, stable across processes."""
    return zlib.crc32(f"{seed}/{key}/{batch}".encode())


def _cost_fields(cost: Cost) -> dict[str, Any]:
    data = cost.to_dict()
    data.pop("total_seconds")
    return data
