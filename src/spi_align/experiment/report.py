"""Comparing methods: mean scores with bootstrap intervals, per-prompt win+½tie rates, markdown tables.

Intervals are `scipy.stats.bootstrap`'s percentile intervals (95%, 2000 resamples, seeded): of one method's mean
(`bootstrap_ci`), and of a statistic of two methods' scores on the same prompts, resampled together prompt by prompt
(`paired_bootstrap_ci`: the mean difference, the win+½tie rate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from spi_align.search.registry import parse_spi_name, spi_name


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaN for no values; one value is its own interval)."""
    return _interval((np.asarray(values, dtype=float),), _mean_along, level, resamples, seed)


def paired_bootstrap_ci(
    ours: Sequence[float],
    theirs: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(ours, theirs)` (vectorised over the last axis), the two score
    lists resampled together, prompt by prompt."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length ({a.size} vs {b.size})")

    def paired(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1))

    return _interval((a, b), paired, level, resamples, seed)


def mean_difference(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Mean over the last axis of ours − theirs (a `paired_bootstrap_ci` statistic)."""
    return (ours - theirs).mean(axis=-1)


def win_tie_share(ours: np.ndarray, theirs: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Win+½tie rate over the last axis (`win_tie_loss`, vectorised: a `paired_bootstrap_ci` statistic)."""
    return _outcomes(ours, theirs, tol).mean(axis=-1)


def _outcomes(ours: np.ndarray, theirs: np.ndarray, tol: float) -> np.ndarray:
    """1 for a win, 0.5 for a tie (within `tol`), 0 for a loss, elementwise."""
    return np.where(np.abs(ours - theirs) <= tol, 0.5, np.where(ours > theirs, 1.0, 0.0))


def _mean_along(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis)


def _interval(
    data: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], level: float, resamples: int, seed: int
) -> tuple[float, float]:
    """`scipy.stats.bootstrap`'s percentile interval; an empty sample gives NaN, a single prompt its own value."""
    if data[0].size == 0:
        return (float("nan"), float("nan"))
    if data[0].size == 1:
        value = float(statistic(*data))
        return (value, value)
    res = bootstrap(
        data,
        statistic,
        paired=len(data) > 1,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def win_tie_loss(ours: Sequence[float], theirs: Sequence[float], tol: float = 1e-6) -> list[float]:
    """Per prompt: 1 for a win, 0.5 for a tie (within `tol`), 0 for a loss."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("win rates need two equally long, non-empty score lists")
    return _outcomes(a, b, tol).tolist()


def win_tie_rate(ours: Sequence[float], theirs: Sequence[float], tol: float = 1e-6) -> float:
    """Share of prompts where `ours` beats `theirs`, counting ties (within `tol`) as half a win."""
    return float(np.mean(win_tie_loss(ours, theirs, tol)))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def forward_tokens(cost: dict[str, Any]) -> int | str:
    """A recorded cost's forward tokens of every model together; "n/a" when it was recorded before they were
    counted."""
    return cost.get("total_forward_tokens", "n/a")


def interval_cell(mean: float, ci: Sequence[float], percent: bool = False) -> str:
    """A table cell 'mean [lo, hi]': a signed difference to four places, or a rate in percent."""
    if percent:
        return f"{mean:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"
    return f"{mean:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"


def paired_difference(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """The mean difference ours − theirs on the same prompts and its paired-bootstrap 95% interval."""
    diff = float(mean_difference(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)))
    return diff, paired_bootstrap_ci(ours, theirs, mean_difference)


def paired_cells(ours: Sequence[float], theirs: Sequence[float]) -> tuple[str, str]:
    """Two table cells comparing scores on the same prompts: the mean difference ours − theirs and the win+½tie
    rate of ours, each with its paired-bootstrap 95% interval."""
    diff, diff_ci = paired_difference(ours, theirs)
    win_ci = paired_bootstrap_ci(ours, theirs, win_tie_share)
    return interval_cell(diff, diff_ci), interval_cell(win_tie_rate(ours, theirs), win_ci, percent=True)


ROUNDS_LEGEND = (
    "Each SPI round against the round before it, on the same eval prompts: the evaluator's paired difference and "
    "win+½tie rate (95% intervals, prompts resampled), and the reward model's paired difference (the proxy the "
    "search climbs). A round that does not beat the one before shows it here; the value tables, where the run has "
    "them, show how well each round's value ranks its own candidates."
)


def rounds_table(results: dict[str, dict[str, Any]]) -> str:
    """Round over round: SPI-k against SPI-(k−1) for every k ≥ 2 whose previous round was evaluated too, at the run's
    own budget ('spi-k') and at each budget the frontier added ('spi-k-wWkKlL' against 'spi-(k−1)-wWkKlL'); "" when
    there is no such pair."""
    headers = ["round", "evaluator Δ [95% CI]", "win+½tie [95% CI]", "reward model Δ [95% CI]"]
    rows: list[list[object]] = []
    for name, res in results.items():
        parsed = parse_spi_name(name)
        previous = spi_name(parsed[0] - 1, parsed[1]) if parsed else ""
        if previous not in results:
            continue
        delta, win = paired_cells(res["evaluator"], results[previous]["evaluator"])
        reward_delta, _ = paired_cells(res["reward"], results[previous]["reward"])
        rows.append([f"{name} vs {previous}", delta, win, reward_delta])
    return ROUNDS_LEGEND + "\n\n" + markdown_table(headers, rows) if rows else ""


def results_table(results: dict[str, dict[str, Any]], baseline: str) -> tuple[list[str], list[list[object]]]:
    """One row per method: reward-model mean, evaluator mean [95% CI], its paired difference from the baseline
    [95% CI], win+½tie vs the baseline [95% CI] (prompts resampled), cost: generated tokens, forward tokens (every
    model's, `Cost.forward_tokens`; n/a for results recorded before they were counted), wall seconds."""
    headers = [
        "method", "reward model", "evaluator [95% CI]", f"Δ vs {baseline} [95% CI]",
        f"win+½tie vs {baseline} [95% CI]", "tokens", "forward tokens", "wall s",
    ]  # fmt: skip
    rows: list[list[object]] = []
    base = results[baseline]["evaluator"] if baseline in results else None
    for name, res in results.items():
        ev = res["evaluator"]
        lo, hi = bootstrap_ci(ev)
        delta = win = "—"
        if base is not None and name != baseline:
            delta, win = paired_cells(ev, base)
        rows.append(
            [
                name,
                _mean(res["reward"]),
                f"{_mean(ev):.4f} [{lo:.4f}, {hi:.4f}]",
                delta,
                win,
                res["cost"]["tokens_generated"],
                forward_tokens(res["cost"]),
                f"{res['cost']['total_seconds']:.0f}",
            ]
        )
    return headers, rows


def plot_rounds(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Evaluator mean (with 95% CI) of each method, SPI rounds in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [_mean(results[n]["evaluator"]) for n in names]
    cis = [bootstrap_ci(results[n]["evaluator"]) for n in names]
    err = np.array(
        [
            [m - lo for m, (lo, _) in zip(means, cis, strict=True)],
            [hi - m for m, (_, hi) in zip(means, cis, strict=True)],
        ]
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = ["#999999" if not n.startswith("spi") else "#1f77b4" for n in names]
    ax.bar(names, means, yerr=err, color=colors, capsize=4)
    ax.set_ylabel("evaluator score (mean, 95% CI)")
    ax.set_title(title)
    low = min(lo for lo, _ in cis)
    ax.set_ylim(bottom=max(0.0, low - 0.05))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


UNDEFINED = "—"
"""What a table shows for a figure that was not measured or is undefined (missing, None, NaN, infinite)."""

VALUE_LEGEND = (
    "Within-prompt Spearman with the final reward, per prefix length: `heldout_*` on the held-out training prompts "
    "(no choice or fit reported on saw them; `heldout_ranked_prompts` of them rank, `*constant_prompts` of those got "
    "one value for every rollout and count as 0), `choice_*` on the prompts the settings were chosen on (optimistic); "
    "`*judge_spearman`: the same values ranked against the evaluator's score of each rollout instead of the reward "
    "(the judge; no value is fitted on it, but with reward: train the reward model was fitted on round 0's labels of "
    "every training prompt, so V_0's judge figures are optimistic), `*partial_reward_*`: the reward on the partial "
    "response alone, the zero-shot baseline; `heldout_reward_judge_*`: the reward that picks, against the judge, on "
    "that round's own held-out rollouts (the guided search's candidates from V_1 on: whether the proxy still tells "
    f"them apart; optimistic for V_0 with reward: train). {UNDEFINED}: not measured or undefined."
)


def _figure(value: Any) -> object:
    """A table cell: `UNDEFINED` for a missing, None or non-finite figure, else the value."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return UNDEFINED
    return value


def _length_key(name: str) -> tuple[str, int | str] | None:
    """('heldout_spearman', 16) for 'heldout_spearman_at_16', (..., 'end') for '..._at_end'; None for other names."""
    stem, sep, at = name.rpartition("_at_")
    if sep and stem and (at.isdigit() or at == "end"):
        return stem, int(at) if at.isdigit() else at
    return None


def _column_rank(stem: str) -> int:
    """Held-out figures first, then the choice prompts', then the rest (α, ...), each in the order first met."""
    return 0 if stem.startswith("heldout_") else 1 if stem.startswith("choice_") else 2


def value_tables(values: dict[int, dict[str, Any]]) -> str:
    """Two markdown tables of the rounds' value metrics (`value_table_rows`), with their legend."""
    (by_length, rows), (fact_headers, fact_rows) = value_table_rows(values)
    text = "## Value functions\n\n" + VALUE_LEGEND + "\n\n"
    if rows:
        text += markdown_table(by_length, rows) + "\n"
    if fact_rows:
        text += markdown_table(fact_headers, fact_rows)
    return text


Table = tuple[list[str], list[list[object]]]


def value_table_rows(values: dict[int, dict[str, Any]]) -> tuple[Table, Table]:
    """The rounds' value metrics as two tables (headers, rows): one row per (round, prefix length) with a column per
    figure measured at a length (`<figure>_at_<length>`), and one row per round with the rest (counts, chosen
    settings; no rows when there is none); `UNDEFINED` where a figure is missing or undefined."""
    stems: dict[str, None] = {}
    facts: dict[str, None] = {}
    by_length: dict[int, dict[int | str, dict[str, Any]]] = {}
    for k, metrics in sorted(values.items()):
        for name, value in metrics.items():
            found = _length_key(name)
            if found is None:
                if not isinstance(value, dict | list):
                    facts.setdefault(name)
                continue
            stems.setdefault(found[0])
            by_length.setdefault(k, {}).setdefault(found[1], {})[found[0]] = value
    columns = sorted(stems, key=_column_rank)
    rows = [
        [f"V_{k}", t, *[_figure(lengths[t].get(stem)) for stem in columns]]
        for k, lengths in sorted(by_length.items())
        for t in sorted(lengths, key=lambda t: (t == "end", t if isinstance(t, int) else 0))
    ]
    fact_rows = [[f"V_{k}", *[_figure(m.get(f)) for f in facts]] for k, m in sorted(values.items())] if facts else []
    return (["round", "length", *columns], rows), (["round", *facts], fact_rows)


def reward_model_table(metrics: dict[str, Any]) -> str:
    """The reward model's metrics as one markdown row (nested figures left out), `UNDEFINED` where undefined."""
    shown = {k: _figure(v) for k, v in metrics.items() if not isinstance(v, dict | list)}
    if "measured_on" in metrics:
        shown.pop("measured_on")
        shown.pop("reward", None)
        return (
            f"## Reward `{metrics.get('reward', '')}`: agreement with the evaluator\n\n`heldout_*`: on the "
            f"{metrics['measured_on']}; pair accuracy counts a tie as ½. {UNDEFINED}: undefined.\n\n"
            + markdown_table(list(shown), [list(shown.values())])
        )
    return (
        "## Reward model (Bradley–Terry head)\n\n`choice_*`: on the training prompts the weight decay was chosen on; "
        "`heldout_*`: accuracy and Spearman of one head fitted without the held-out prompts, both on those prompts; "
        f"`train_accuracy`: the head used, on every pair. {UNDEFINED}: not measured or undefined.\n\n"
        + markdown_table(list(shown), [list(shown.values())])
    )


def value_kind(spi: Any) -> str:
    """How the value functions were built, for a report's header."""
    if spi.value == "model":
        layers = {0: "head only", -1: "all layers"}.get(spi.value_train_layers, f"last {spi.value_train_layers} layers")
        kind = f"value model on {spi.value_backbone} ({layers} tuned)"
    elif spi.value == "anchored":
        kind = "values anchored on the reward of the partial response (+ residual linear heads)"
    else:
        kind = f"{spi.head} value heads"
    return kind + (f" + {spi.reward_guide} × reward model on prefixes" if spi.reward_guide else "")


def write_report(
    run: Any,
    cfg: Any,
    results: dict[str, dict[str, Any]],
    values: dict[int, dict[str, Any]],
    baseline: str,
    sections: Sequence[str] = (),
) -> str:
    """report.md, results.json and evaluator_by_round.png in the run directory; returns the markdown. `sections`:
    further markdown sections (e.g. the compute frontier), shown after the reward model's."""
    headers, rows = results_table(results, baseline)
    spi = cfg.spi
    n_eval = len(next(iter(results.values()))["evaluator"])
    text = (
        f"# SPI report: {run.path.name}\n\n"
        f"Policy `{cfg.policy.model}`, {n_eval} eval prompts, max_new_tokens={cfg.generation.max_new_tokens}, "
        f"W={spi.width} K={spi.successors} L={spi.chunk}, selection={spi.selection}, betas={spi.betas}, "
        f"{value_kind(spi)}, centred={spi.centered}. Reward (guides and picks): `{cfg.reward}`; "
        f"evaluator (judges only): `{cfg.evaluator}`.\n\n" + markdown_table(headers, rows)
    )
    if rounds := rounds_table(results):
        text += "\n## Round over round\n\n" + rounds
    if values:
        text += "\n" + value_tables(values)
    if run.has("reward_model.json"):
        text += "\n" + reward_model_table(run.read_json("reward_model.json"))
    text += "".join("\n" + section for section in sections)
    text += "\n![evaluator by method](evaluator_by_round.png)\n"
    plot_rounds(results, run.file("evaluator_by_round.png"), f"{run.path.name}: evaluator score")
    run.write_json("results.json", {"results": results, "values": {str(k): v for k, v in values.items()}})
    run.write_text("report.md", text)
    return text
