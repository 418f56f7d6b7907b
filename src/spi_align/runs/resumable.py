"""Running a method over a prompt set inside a run directory: resumable batch by batch, costs recorded.

Algorithm 1 (rollouts) and the experiment harness (evaluation) both run methods this way. After each batch its
records are appended to `<key>.jsonl` (one record per line, one write flushed to disk), then `<key>.cost.json` is
replaced by the cumulative cost with the number of records it covers. A resume keeps exactly the records the saved
cost covers: lines a crash left after them (a torn last line, or a whole batch whose cost was never written) are
dropped and cut from the file before it is appended to again, so records and cost always agree. Folders written
before the count existed (a cost without `records`) are read as they were: the cost covers every record.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from spi_align.core.interfaces import Search
from spi_align.core.records import Cost, Prompt
from spi_align.runs.files import read_appended_jsonl
from spi_align.runs.rundir import RunDir

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
    """Run `search` on `prompts`, appending to `<key>.jsonl` and saving `<key>.cost.json` after every batch.

    A rerun picks up after the last saved batch, so an interrupted run loses at most one batch. Each batch
    starts from its own seed (`reseed`), so a resumed run samples what an uninterrupted one would.
    """
    out, cost_file = f"{key}.jsonl", f"{key}.cost.json"
    records, cost = _resume(run, out, cost_file)
    done = {r["id"] for r in records}
    todo = [p for p in prompts if p.id not in done]
    if todo:
        log.info("%s: %d prompts to run (%d done before)", key, len(todo), len(prompts) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        if reseed is not None:
            reseed(batch_seed(seed, key, (len(prompts) - len(todo) + start) // batch_size))
        new = [r.to_record() for r in search.run(batch, cost)]
        run.append_jsonl(out, new)
        records.extend(new)
        run.write_json(cost_file, {"cost": _cost_fields(cost), "records": len(records)})
        log.info("%s: %d/%d prompts", key, len(prompts) - len(todo) + start + len(batch), len(prompts))
    order = {p.id: i for i, p in enumerate(prompts)}
    records = sorted((r for r in records if r["id"] in order), key=lambda r: order[r["id"]])
    return records, cost


def _resume(run: RunDir, out: str, cost_file: str) -> tuple[list[dict[str, Any]], Cost]:
    """The saved records and the cost that covers them; anything after them in `out` is cut from the file."""
    if not run.has(out):
        return [], Cost()
    records, ends = read_appended_jsonl(run.file(out))
    saved = run.read_json(cost_file) if run.has(cost_file) else None
    covered = 0 if saved is None else min(int(saved.get("records", len(records))), len(records))
    if covered < len(records):
        log.warning(
            "%s: dropped %d records written after the last saved cost (an interrupted batch); they run again",
            out,
            len(records) - covered,
        )
    size = ends[covered - 1] if covered else 0
    if size != run.file(out).stat().st_size:
        run.cut(out, size)
    cost = Cost.from_dict(saved["cost"]) if saved is not None and covered else Cost()
    return records[:covered], cost


def save_cost(run: RunDir, name: str, cost: Cost) -> None:
    """Write `name` (`<step>.cost.json`): the compute of a step that is not a method run, e.g. a fit or the prefix
    states of training (read back by `load_cost`)."""
    run.write_json(name, {"cost": _cost_fields(cost)})


def load_cost(run: RunDir, name: str) -> Cost | None:
    """The cost a `.cost.json` file of the run records (`run_method`'s or `save_cost`'s); None when it has none."""
    return Cost.from_dict(run.read_json(name)["cost"]) if run.has(name) else None


def batch_seed(seed: int, key: str, batch: int) -> int:
    """A seed for one batch of one method, stable across processes."""
    return zlib.crc32(f"{seed}/{key}/{batch}".encode())


def _cost_fields(cost: Cost) -> dict[str, Any]:
    data = cost.to_dict()
    data.pop("total_seconds")
    return data
