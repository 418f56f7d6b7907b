"""`spi judge RUN_DIR`: a finished run's methods judged pairwise against a baseline by an LLM judge.

Judgements are appended to `judge/<model>/<method>-vs-<baseline>.jsonl` as they arrive, so an interrupted or failed
judging resumes where it stopped (and a paid API is never asked twice about the same pair). The table (win, tie,
loss, win + ½ tie, malformed) lands in `judge/<model>/table.md` and `results.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spi_align.core.errors import SpiError
from spi_align.evaluation.judge import (
    ChatClient,
    JudgeConfig,
    Pair,
    PairJudgement,
    PairwiseJudge,
    Tally,
    resolve_endpoint,
)
from spi_align.experiment.outputs import load_answers, open_run, pick_methods
from spi_align.experiment.report import markdown_table
from spi_align.runs.files import atomic_write_json, atomic_write_text
from spi_align.runs.rundir import slug


def default_baseline(methods: list[str]) -> str:
    """The run's best-of-N method, when it has exactly one."""
    bon = [m for m in methods if m.startswith("bon-")]
    if len(bon) != 1:
        raise SpiError(f"pass --against: one of {', '.join(methods)}")
    return bon[0]


def _read_done(path: Path) -> dict[str, PairJudgement]:
    """Saved judgements (a line cut short by an interruption is ignored: that pair is asked again)."""
    done: dict[str, PairJudgement] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["id"]] = PairJudgement(**record)
    return done


def judge_method(judge: PairwiseJudge, run: Path, method: str, baseline: str, cache: Path) -> Tally:
    """Judge `method` against `baseline` on the prompts both answered; saved judgements are reused."""
    ours = {a.id: a for a in load_answers(run, method)}
    theirs = {a.id: a for a in load_answers(run, baseline)}
    ids = [i for i in ours if i in theirs]
    if not ids:
        raise SpiError(f"{method} and {baseline} answered no prompt in common in {run}")
    done = _read_done(cache)
    todo = [Pair(i, ours[i].instruction, ours[i].output, theirs[i].output) for i in ids if i not in done]
    if done:  # rewrite without any cut-short line before appending
        atomic_write_text(cache, "".join(json.dumps(asdict(done[i])) + "\n" for i in ids if i in done))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a", encoding="utf-8") as handle:

        def save(judgement: PairJudgement) -> None:
            done[judgement.id] = judgement
            handle.write(json.dumps(asdict(judgement)) + "\n")
            handle.flush()

        judge.judge_many(todo, on_done=save)
    tally = Tally()
    for i in ids:
        tally.add(done[i])
    return tally


def judge_run(
    run_dir: str | Path, cfg: JudgeConfig, against: str | None = None, methods: list[str] | None = None
) -> tuple[str, Path]:
    """Judge each method of a finished run against the baseline; returns the markdown table and its folder."""
    run = open_run(run_dir)
    every = pick_methods(run, None)
    baseline = against or default_baseline(every)
    pick_methods(run, [baseline])
    chosen = [m for m in pick_methods(run, methods) if m != baseline]
    if not chosen:
        raise SpiError(f"nothing to judge against {baseline}: the run has {', '.join(every)}")
    endpoint = resolve_endpoint(cfg)
    judge = PairwiseJudge(ChatClient(endpoint, cfg))
    folder = run / "judge" / slug(endpoint.model)
    tallies: dict[str, Tally] = {}
    for method in chosen:
        tallies[method] = judge_method(judge, run, method, baseline, folder / f"{method}-vs-{baseline}.jsonl")
    text = render(tallies, baseline, endpoint.model, run.name)
    summary: dict[str, Any] = {
        "judge": {"model": endpoint.model, "base_url": endpoint.base_url},
        "baseline": baseline,
        "methods": {m: t.to_dict() for m, t in tallies.items()},
    }
    atomic_write_json(folder / "results.json", summary)
    atomic_write_text(folder / "table.md", text)
    return text, folder


def render(tallies: dict[str, Tally], baseline: str, model: str, run_name: str) -> str:
    """The judge table: one row per method, rates over the pairs that got a verdict in both orders."""
    headers = ["method", "win", "tie", "loss", "win+½tie", "malformed pairs", "malformed answers", "identical"]
    rows = [
        [
            m,
            t.win,
            t.tie,
            t.loss,
            f"{t.win_half_tie:.1%}" if t.judged else "n/a",
            t.malformed,
            t.malformed_answers,
            t.identical,
        ]
        for m, t in tallies.items()
    ]
    return (
        f"# {run_name}: pairwise judge `{model}` vs {baseline}\n\n"
        "Each pair asked in both orders: a win needs both orders to prefer the method, a split counts as a tie; "
        "identical responses are ties without asking; malformed pairs (no usable verdict in one order after "
        "retries) are left out of the rates.\n\n" + markdown_table(headers, rows)
    )
