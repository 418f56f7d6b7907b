"""The compute frontier inside `spi run` (config section `frontier`): judge score against compute, best-of-N at every
N beside SPI at several beam budgets, SPI's training cost spread over the queries served.

- **Best-of-N**: the method 'bon-n' (n = `frontier.samples`) runs once through the registry like any method, so it
  resumes batch by batch from `eval-bon-n.jsonl` (shared with the run's own best-of-(W·K) when W·K = n); its
  candidates carry the reward's score from the search, and the evaluator judges every candidate once, kept in
  `frontier-judge.jsonl` (appended per batch, resumable). BoN-N for N in `frontier.sizes` is the unbiased subset
  estimate over those n samples (`frontier_maths.py`), per prompt, then the mean and its bootstrap interval
  (`report.bootstrap_ci`). Its compute per prompt is the expectation over the N-subsets: the prompt's prefill once,
  and N/n of everything per sample (generated tokens, decode, peeks, reward forwards) of the n-sample run.
- **SPI**: each round k of `frontier.rounds` at each budget [W, K, L] of `frontier.budgets` is a registered method
  'spi-k-wWkKlL' (the run's own W, K, L is its plain 'spi-k'), evaluated with the other methods on the same prompts;
  its search compute is its recorded `Cost` per prompt.
- **Training**: SPI-k's one-off cost is what the run recorded for it: rollouts of rounds 0 .. k−1, round 0's prefix
  states, the reward model's fit (reward: train) and the fits of V_0 .. V_{k−1} (`*.cost.json`); an artefact whose
  cost was never recorded (a run older than these records) is listed as not recorded. Spread over Q queries:
  search + training / Q per query; the break-even Q against the cheapest best-of-N of at least SPI's judge mean is
  given for generated tokens and for forward tokens.
- **Paired**: the points share their eval prompts, so each SPI point is also compared with every BoN-N prompt by
  prompt: the judge's mean difference and SPI's expected win+½tie against a best-of-N drawn from the n samples (every
  N-subset counted exactly, `frontier_maths.win_against_best_of_n`), each with its bootstrap interval over prompts.
  The report shows it against the smallest BoN-N that costs at least SPI's search per prompt on each axis.

Writes `frontier.json` and `frontier.png` (judge mean with its interval against generated tokens per prompt, and
against forward tokens per prompt) and returns the markdown the report shows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spi_align.config import Config, FrontierConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Scorer, Search
from spi_align.core.records import Cost, Prompt
from spi_align.experiment.frontier_maths import (
    BreakEven,
    best_of_n_estimates,
    break_even,
    per_query,
    win_against_best_of_n,
)
from spi_align.experiment.report import bootstrap_ci, interval_cell, markdown_table, paired_difference
from spi_align.runs.files import read_appended_jsonl
from spi_align.runs.resumable import load_cost
from spi_align.runs.rundir import RunDir
from spi_align.scoring.finite import finite_scores
from spi_align.search.registry import SPI_BUDGET_NAME_PATTERN, MethodContext, build_method, register, spi_name
from spi_align.spi import REWARD_COST, REWARD_DIR, STATES_COST, STATES_DIR, fit_cost_file, round_folder

log = logging.getLogger(__name__)

JUDGE_FILE = "frontier-judge.jsonl"
"""The evaluator's score of every candidate of 'bon-n', one line per prompt: {"id", "judge": [one per candidate]}."""
AXES = (("generated_tokens", "generated tokens"), ("forward_tokens", "forward tokens"))
"""The compute axes of the frontier: JSON key, and what the table and plot call it."""

MethodRunner = Callable[[str, Search, list[Prompt]], tuple[list[dict[str, Any]], Cost]]
"""Runs a method resumably in the run folder (`SPIRun.method`): key, search, prompts -> records, cost."""


def budget_name(k: int, budget: Sequence[int], own: Sequence[int]) -> str:
    """'spi-k-wWkKlL' for SPI-k at budget [W, K, L]; plain 'spi-k' at the run's own W, K, L."""
    width, successors, chunk = budget
    return spi_name(k, None if list(budget) == list(own) else (width, successors, chunk))


def spi_points(frontier: FrontierConfig, rounds: int, own: Sequence[int]) -> list[tuple[str, int, list[int]]]:
    """(method, k, [W, K, L]) of every SPI point on the frontier, once each: `frontier.rounds` (or every trained
    round) at every budget."""
    points: dict[str, tuple[str, int, list[int]]] = {}
    for k in frontier.rounds or range(1, rounds + 1):
        for budget in frontier.budgets:
            name = budget_name(k, budget, own)
            points.setdefault(name, (name, k, list(budget)))
    return list(points.values())


def _own(ctx: MethodContext) -> list[int]:
    return [ctx.spi.width, ctx.spi.successors, ctx.spi.chunk]


def _offered(ctx: MethodContext) -> list[str]:
    """The frontier's SPI methods at other budgets than the run's own (none unless `spi run` enables the frontier)."""
    frontier = ctx.extras.get("frontier")
    if not isinstance(frontier, FrontierConfig) or ctx.reward is None:
        return []
    return [name for name, k, _ in spi_points(frontier, ctx.rounds, _own(ctx)) if name != spi_name(k)]


@register(SPI_BUDGET_NAME_PATTERN, _offered, "SPI-k at beam budget W, K, L (the compute frontier)")
def _spi_at_budget(match: re.Match[str], ctx: MethodContext) -> Search:
    from spi_align.search.beam import ChunkBeamSearch

    name = match.group(0)
    k, width, successors, chunk = (int(g) for g in match.groups())
    if not 1 <= k <= ctx.rounds:
        raise SpiError(f"method '{name}': only spi-1 .. spi-{ctx.rounds} are trained here")
    if min(width, successors, chunk) < 1:
        raise SpiError(f"method '{name}': W, K and L must be at least 1")
    spi = ctx.spi.model_copy(update={"width": width, "successors": successors, "chunk": chunk})
    return ChunkBeamSearch.from_config(ctx.policy, ctx.guidance(k), ctx.needs_reward(name), spi, name)


def judged_samples(
    run: RunDir, records: Sequence[dict[str, Any]], prompts: Sequence[Prompt], evaluator: Scorer, batch_size: int
) -> list[list[float]]:
    """The evaluator's score of every candidate of every record, judged once: read from `JUDGE_FILE`, and the prompts
    it lacks judged `batch_size` prompts at a time, each batch appended (a torn last line is cut and judged again)."""
    done: dict[str, list[float]] = {}
    if run.has(JUDGE_FILE):
        saved, ends = read_appended_jsonl(run.file(JUDGE_FILE))
        size = ends[-1] if ends else 0
        if size != run.file(JUDGE_FILE).stat().st_size:
            run.cut(JUDGE_FILE, size)
        done = {str(r["id"]): [float(s) for s in r["judge"]] for r in saved}
    by_id = {p.id: p for p in prompts}
    todo = [r for r in records if str(r["id"]) not in done]
    if todo:
        log.info("frontier: judging the samples of %d prompts (%d judged before)", len(todo), len(records) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        texts = [c["text"] for r in batch for c in r["candidates"]]
        asked = [by_id[r["id"]] for r in batch for _ in r["candidates"]]
        scores = finite_scores(evaluator, evaluator.score(asked, texts), texts)
        lines, at = [], 0
        for r in batch:
            count = len(r["candidates"])
            lines.append({"id": r["id"], "judge": scores[at : at + count]})
            at += count
        run.append_jsonl(JUDGE_FILE, lines)
        done.update({str(line["id"]): line["judge"] for line in lines})
    out = [done[str(r["id"])] for r in records]
    for r, judged in zip(records, out, strict=True):
        if len(judged) != len(r["candidates"]):
            raise SpiError(
                f"{run.file(JUDGE_FILE)}: prompt {r['id']} has {len(judged)} scores for {len(r['candidates'])} samples"
            )
    return out


def _interval(values: Sequence[float]) -> dict[str, Any]:
    lo, hi = bootstrap_ci(values)
    return {"judge_mean": float(np.mean(values)), "judge_ci": [lo, hi]}


def sample_rewards(records: Sequence[dict[str, Any]]) -> list[list[float]]:
    """The reward of every sample of every 'bon-n' record (the same n for every prompt)."""
    n = len(records[0]["candidates"])
    if any(len(r["candidates"]) != n for r in records):
        raise SpiError("the frontier's best-of-n records hold different numbers of samples per prompt")
    rewards = []
    for r in records:
        scores = [c["score"] for c in r["candidates"]]
        if any(s is None for s in scores):
            raise SpiError(f"prompt {r['id']}: a sample of the frontier's best-of-{n} has no reward score")
        rewards.append([float(s) for s in scores])
    return rewards


def best_of_n_rows(
    records: Sequence[dict[str, Any]], judged: Sequence[Sequence[float]], cost: Cost, sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """One row per N: the judge's and the reward's BoN-N estimates (per prompt, mean and interval of the judge's) and
    the expected compute per prompt of best-of-N (see the module docstring)."""
    rewards = sample_rewards(records)
    n = len(rewards[0])
    prompts = len(records)
    prefill = cost.forward_tokens.get("policy_prefill", 0) / prompts
    per_sample = {
        "generated_tokens": cost.tokens_generated / prompts / n,
        "forward_tokens": (cost.total_forward_tokens / prompts - prefill) / n,
    }
    rows = []
    for size in sizes:
        judge = best_of_n_estimates(rewards, judged, size)
        rows.append(
            {
                "method": f"bon-{size}",
                "size": size,
                **_interval(judge),
                "reward_mean": float(np.mean(best_of_n_estimates(rewards, rewards, size))),
                "generated_tokens": size * per_sample["generated_tokens"],
                "forward_tokens": prefill + size * per_sample["forward_tokens"],
                "judge_by_prompt": judge,
            }
        )
    return rows


def training_cost(run: RunDir, cfg: Config, k: int) -> dict[str, Any]:
    """SPI-k's recorded training compute: every part's cost (rollouts of rounds 0 .. k−1, round 0's prefix states,
    the reward model's fit, the fits of V_0 .. V_{k−1}), their total, and the parts whose artefact is in the run
    without a cost record."""
    wanted = [(f"rollouts-{j}", f"rollouts-{j}.cost.json", f"rollouts-{j}.jsonl") for j in range(k)]
    wanted.append(("prefix states", STATES_COST, STATES_DIR))
    if cfg.reward == "train":
        wanted.append(("reward model fit", REWARD_COST, REWARD_DIR))
    wanted += [(f"V_{j} fit", fit_cost_file(j), round_folder(j)) for j in range(k)]
    parts: dict[str, Cost] = {}
    missing: list[str] = []
    for label, file, artefact in wanted:
        cost = load_cost(run, file)
        if cost is not None:
            parts[label] = cost
        elif run.has(artefact):
            missing.append(label)
    total = Cost()
    for cost in parts.values():
        total.add(cost)
    return {
        "generated_tokens": total.tokens_generated,
        "forward_tokens": total.total_forward_tokens,
        "seconds": total.total_seconds,
        "parts": {label: cost.to_dict() for label, cost in parts.items()},
        "not_recorded": missing,
    }


def paired_with_best_of_n(
    ours: Sequence[float],
    rewards: Sequence[Sequence[float]],
    judged: Sequence[Sequence[float]],
    bon: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """A method's judge score per prompt against every BoN-N of `bon` on the same prompts, all in the eval prompts'
    order (`run_method` returns records in the order of the prompts it is given): the mean difference from the BoN-N
    estimate and the expected win+½tie against a BoN-N draw, with bootstrap 95% intervals over prompts."""
    if not len(ours) == len(rewards) == len(judged) == len(bon[0]["judge_by_prompt"]):
        raise SpiError(
            f"the frontier pairs {len(ours)} method scores with best-of-N samples of {len(rewards)} prompts: "
            "they must be the same eval prompts"
        )
    rows = []
    for b in bon:
        delta, delta_ci = paired_difference(ours, b["judge_by_prompt"])
        wins = [win_against_best_of_n(o, r, j, b["size"]) for o, r, j in zip(ours, rewards, judged, strict=True)]
        rows.append(
            {
                "bon": b["size"],
                "judge_delta": delta,
                "judge_delta_ci": list(delta_ci),
                "win_tie": float(np.mean(wins)),
                "win_tie_ci": list(bootstrap_ci(wins)),
            }
        )
    return rows


def matched_size(cost: float, bon: Sequence[dict[str, Any]], key: str) -> int | None:
    """The smallest N of `bon` whose best-of-N costs at least `cost` per prompt on the axis `key` (None when every
    best-of-N of the frontier costs less)."""
    sizes = [b["size"] for b in bon if b[key] >= cost]
    return min(sizes) if sizes else None


def _break_even_dict(found: BreakEven) -> dict[str, Any]:
    return {"status": found.status, "bon": found.size, "queries": found.queries, "text": found.describe()}


def spi_rows(
    run: RunDir,
    cfg: Config,
    results: dict[str, dict[str, Any]],
    points: Sequence[tuple[str, int, list[int]]],
    bon: Sequence[dict[str, Any]],
    samples: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]],
) -> list[dict[str, Any]]:
    """One row per SPI point: judge mean and interval, search compute per prompt, training compute, per-query
    compute at every Q of `frontier.queries`, the break-even on both axes, and the paired comparison with every
    BoN-N (`samples`: the rewards and judge scores of the n samples per prompt) with the matched N on each axis."""
    rows = []
    for name, k, budget in points:
        res = results[name]
        prompts = len(res["evaluator"])
        cost = Cost.from_dict(res["cost"])
        row: dict[str, Any] = {
            "method": name,
            "round": k,
            "budget": budget,
            **_interval(res["evaluator"]),
            "generated_tokens": cost.tokens_generated / prompts,
            "forward_tokens": cost.total_forward_tokens / prompts,
            "training": training_cost(run, cfg, k),
        }
        row["per_query"] = {
            str(q): {key: per_query(row[key], row["training"][key], q) for key, _ in AXES} for q in cfg.frontier.queries
        }
        row["break_even"] = {
            key: _break_even_dict(
                break_even(
                    row["judge_mean"],
                    row[key],
                    row["training"][key],
                    [(b["size"], b["judge_mean"], b[key]) for b in bon],
                )
            )
            for key, _ in AXES
        }
        row["paired"] = paired_with_best_of_n(res["evaluator"], *samples, bon)
        row["matched"] = {key: matched_size(row[key], bon, key) for key, _ in AXES}
        rows.append(row)
    return rows


def _ci_text(row: dict[str, Any]) -> str:
    lo, hi = row["judge_ci"]
    return f"{row['judge_mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def frontier_markdown(data: dict[str, Any]) -> str:
    """The frontier's two tables (best-of-N; SPI with training and break-even) with their legend."""
    n, queries = data["samples"], data["queries"]
    text = (
        f"## Compute frontier\n\nBest-of-N estimated over all N-subsets of {n} samples per prompt (unbiased subset "
        "estimator; compute per prompt: the expectation over the subsets). SPI: searched at each budget W, K, L; "
        "training (rollouts, prefix states, fits, as the run recorded them) spread over Q queries. Break-even: "
        "the fewest queries from which SPI's per-query compute (search + training / Q) is at most that of the "
        "smallest BoN-N whose judge mean is at least SPI's (named); never: that BoN-N costs no more than SPI's "
        "search alone; not reached: no BoN-N of the list scores as high as SPI. Judge: the evaluator, mean "
        "[95% CI] over prompts.\n\n"
    )
    headers = ["method", "judge [95% CI]", "reward (expected)", "generated tokens / prompt", "forward tokens / prompt"]
    rows = [
        [b["method"], _ci_text(b), b["reward_mean"], f"{b['generated_tokens']:.1f}", f"{b['forward_tokens']:.1f}"]
        for b in data["bon"]
    ]
    text += markdown_table(headers, rows) + "\n"
    headers = ["method", "W, K, L", "judge [95% CI]", "generated tokens / prompt", "forward tokens / prompt"]
    headers += ["training: generated tokens", "training: forward tokens"]
    headers += [f"forward tokens / query at Q={q:,}" for q in queries]
    headers += [f"break-even ({label})" for _, label in AXES]
    rows = []
    for s in data["spi"]:
        training = s["training"]
        rows.append(
            [
                s["method"],
                ", ".join(str(v) for v in s["budget"]),
                _ci_text(s),
                f"{s['generated_tokens']:.1f}",
                f"{s['forward_tokens']:.1f}",
                f"{training['generated_tokens']:,}",
                f"{training['forward_tokens']:,}",
                *[f"{s['per_query'][str(q)]['forward_tokens']:.1f}" for q in queries],
                *[s["break_even"][key]["text"] for key, _ in AXES],
            ]
        )
    text += markdown_table(headers, rows)
    missing = sorted({part for s in data["spi"] for part in s["training"]["not_recorded"]})
    if missing:
        text += f"\nTraining compute not recorded by this run (left out of the totals): {', '.join(missing)}.\n"
    return text + "\n" + paired_markdown(data) + "\n![compute frontier](frontier.png)\n"


def paired_markdown(data: dict[str, Any]) -> str:
    """Each SPI point against the best-of-N that costs at least its search per prompt, on each axis, paired by
    prompt (frontier.json has it against every N)."""
    text = (
        "SPI against best-of-N at its cost, paired by prompt: the smallest BoN-N of the frontier whose compute per "
        "prompt is at least SPI's search (training left out) on each axis; the judge's mean difference, and SPI's "
        "expected win+½tie against a best-of-N drawn from the samples (every N-subset counted exactly), against "
        "which a method distributed like best-of-N scores ½ (against best-of-N's expected score it would not, "
        "unless each prompt's best-of-N median equals its mean). 95% intervals, prompts resampled; "
        "`frontier.json` has every N.\n\n"
    )
    return text + paired_table(data, matched_only=True)


def paired_table(data: dict[str, Any], matched_only: bool = False) -> str:
    """Every SPI point of `data` (frontier.json) against every BoN-N, or only against the matched BoN-N of each
    axis (named with the axis; "none" where every BoN-N costs less)."""
    headers = ["method", "best-of-N", "judge Δ [95% CI]", "win+½tie vs a best-of-N draw [95% CI]"]
    rows: list[list[object]] = []
    for s in data["spi"]:
        paired = {p["bon"]: p for p in s["paired"]}
        named: list[tuple[int | None, str]] = [(size, f"bon-{size}") for size in paired]
        if matched_only:
            axes: dict[int | None, list[str]] = {}
            for key, label in AXES:
                axes.setdefault(s["matched"][key], []).append(label)
            named = [
                (
                    size,
                    f"bon-{size} ({' and '.join(labels)})"
                    if size
                    else f"none: all cost less in {' and '.join(labels)}",
                )
                for size, labels in axes.items()
            ]
        for size, name in named:
            if size is None:
                rows.append([s["method"], name, "—", "—"])
                continue
            p = paired[size]
            delta = interval_cell(p["judge_delta"], p["judge_delta_ci"])
            rows.append([s["method"], name, delta, interval_cell(p["win_tie"], p["win_tie_ci"], percent=True)])
    return markdown_table(headers, rows)


def labelled_points(xs: Sequence[float], min_gap: float = 0.25) -> list[int]:
    """Which of the points at increasing `xs` get a label on a log2 axis: each that lies at least `min_gap` octaves
    right of the last labelled one, so sizes added to match a cost (17, 18 beside 16) do not print over each other."""
    kept: list[int] = []
    for i, x in enumerate(xs):
        if not kept or np.log2(x) - np.log2(xs[kept[-1]]) >= min_gap:
            kept.append(i)
    return kept


def plot_frontier(data: dict[str, Any], path: Any, title: str) -> None:
    """Judge mean with its interval against generated tokens per prompt (left) and forward tokens per prompt (right):
    the best-of-N curve, SPI's points (filled: search only; open: with training spread over each Q)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes, AXES, strict=True):
        bon = data["bon"]
        xs = [b[key] for b in bon]
        ax.plot(xs, [b["judge_mean"] for b in bon], "o-", color="#555555", label=f"best-of-N (of {data['samples']})")
        ax.fill_between(
            xs, [b["judge_ci"][0] for b in bon], [b["judge_ci"][1] for b in bon], color="#999999", alpha=0.3
        )
        for i in labelled_points(xs):
            b = bon[i]
            ax.annotate(
                str(b["size"]), (b[key], b["judge_mean"]), textcoords="offset points", xytext=(0, 6), fontsize=7
            )
        for i, s in enumerate(data["spi"]):
            colour = colours[i % len(colours)]
            lo, hi = s["judge_ci"]
            err = [[s["judge_mean"] - lo], [hi - s["judge_mean"]]]
            ax.errorbar([s[key]], [s["judge_mean"]], yerr=err, fmt="s", color=colour, capsize=3, label=s["method"])
            spread = [s["per_query"][str(q)][key] for q in data["queries"]]
            ax.plot([s[key], *spread], [s["judge_mean"]] * (len(spread) + 1), ":", color=colour)
            ax.plot(spread, [s["judge_mean"]] * len(spread), "s", mfc="none", color=colour)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{label} per prompt (open: + training / Q, Q = {', '.join(f'{q:,}' for q in data['queries'])})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("judge score (mean, 95% CI)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_frontier(
    run: RunDir,
    cfg: Config,
    ctx: MethodContext,
    run_method: MethodRunner,
    prompts: list[Prompt],
    evaluator: Scorer,
    results: dict[str, dict[str, Any]],
) -> str:
    """Sample (or resume) 'bon-n', judge its samples once, estimate every BoN-N, place the SPI points evaluated in
    `results` with their training cost; write `frontier.json` and `frontier.png`; return the report's markdown."""
    frontier = cfg.frontier
    n = frontier.samples
    log.info("frontier: best-of-%d samples on %d eval prompts", n, len(prompts))
    records, cost = run_method(f"eval-bon-{n}", build_method(f"bon-{n}", ctx), prompts)
    judged = judged_samples(run, records, prompts, evaluator, cfg.data.batch_size)
    bon = best_of_n_rows(records, judged, cost, frontier.bon_sizes)
    rewards = sample_rewards(records)
    points = spi_points(frontier, ctx.rounds, _own(ctx))
    data = {
        "samples": n,
        "prompts": len(prompts),
        "queries": frontier.queries,
        "bon": bon,
        "spi": spi_rows(run, cfg, results, points, bon, (rewards, judged)),
    }
    run.write_json("frontier.json", data)
    plot_frontier(data, run.file("frontier.png"), f"{run.path.name}: compute frontier")
    return frontier_markdown(data)
