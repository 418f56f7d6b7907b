"""A sweep's results as the paper shows them: Table 1/3-shaped tables and Figure 4/5-shaped plots.

One row per (cell, SPI round): the settings that vary, the value function's data size (training prompts ×
rollouts), then win / tie / win + ½ tie against the baseline (best-of-(W·K)) by the held-out evaluator (the
paper's "RM" columns: a scorer that never guided the search), the same by the guiding reward model, the LLM judge's
when `spi judge` was run on the cell, the evaluator's mean score of a plain sample, the baseline and SPI, a learned
reward model's held-out accuracy and Spearman with its labeller (reward: train), and SPI's compute relative to the
baseline: generated tokens, and forward tokens of every model (policy, peeks, value models, reward models;
`Cost.forward_tokens`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spi_align.experiment.report import markdown_table, paired_bootstrap_ci, win_tie_loss, win_tie_share
from spi_align.experiment.sweep_spec import Cell, SweepSpec
from spi_align.runs.files import atomic_write_json, atomic_write_text
from spi_align.search.registry import spi_rounds


def _judge_rate(cell_dir: Path, method: str, baseline: str) -> float | None:
    """win + ½ tie by the first LLM judge run on this cell against `baseline`, if any."""
    for path in sorted(cell_dir.glob("judge/*/results.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("baseline") == baseline and method in data.get("methods", {}):
            return data["methods"][method]["win_half_tie"]
    return None


def _reward_model_heldout(cell_dir: Path | None) -> dict[str, float] | None:
    """The learned reward model's held-out accuracy and within-prompt Spearman with its labeller
    (`reward_model.json`), where the cell fitted one (reward: train) and both are defined; else None. A configured
    reward's agreement with the labeller (the same file, with 'measured_on': measured on every training prompt, not
    held out) is not a held-out figure and gives None too."""
    path = None if cell_dir is None else cell_dir / "reward_model.json"
    if path is None or not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if "measured_on" in metrics:
        return None
    accuracy, spearman = metrics.get("heldout_accuracy"), metrics.get("heldout_spearman_with_labeller")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (accuracy, spearman)):
        return None
    return {"accuracy": float(accuracy), "spearman": float(spearman)}


def cell_rows(
    settings: dict[str, Any], config: Any, results: dict[str, Any], baseline: str, cell_dir: Path | None = None
) -> list[dict[str, Any]]:
    """One row per SPI round of one cell, compared with `baseline` on the same prompts."""
    if baseline not in results:
        raise KeyError(f"baseline {baseline} missing from results ({', '.join(results)})")
    base = results[baseline]
    rows = []
    for k, method in spi_rounds(list(results)):
        res = results[method]
        outcome = win_tie_loss(res["evaluator"], base["evaluator"])
        lo, hi = paired_bootstrap_ci(res["evaluator"], base["evaluator"], win_tie_share)
        tokens, base_tokens = res["cost"]["tokens_generated"], base["cost"]["tokens_generated"]
        forward, base_forward = res["cost"].get("total_forward_tokens"), base["cost"].get("total_forward_tokens")
        rows.append(
            {
                "settings": settings,
                "round": k,
                "method": method,
                "baseline": baseline,
                "data_size": _data_size(config, cell_dir),
                "prompts": len(outcome),
                "win": outcome.count(1.0) / len(outcome),
                "tie": outcome.count(0.5) / len(outcome),
                "win_half_tie": float(np.mean(outcome)),
                "ci": [lo, hi],
                "reward_win_half_tie": float(np.mean(win_tie_loss(res["reward"], base["reward"]))),
                "eval_means": {
                    role: float(np.mean(results[name]["evaluator"]))
                    for role, name in (("sample", "sample"), ("baseline", baseline), ("spi", method))
                    if name in results
                },
                "reward_model_heldout": _reward_model_heldout(cell_dir),
                "judge_win_half_tie": _judge_rate(cell_dir, method, baseline) if cell_dir else None,
                "tokens": tokens,
                "tokens_vs_baseline": tokens / base_tokens if base_tokens else math.nan,
                "forward_tokens": forward,
                "forward_tokens_vs_baseline": forward / base_forward if forward is not None and base_forward else None,
            }
        )
    return rows


def _data_size(config: Any, cell_dir: Path | None) -> int | None:
    """Rollouts V_0 was fitted on: the count its fit recorded (`values/round-0.json`), else training prompts ×
    round-0 rollouts from the config; None when neither says (the whole training split, not yet fitted)."""
    if cell_dir is not None and (cell_dir / "values" / "round-0.json").exists():
        recorded = json.loads((cell_dir / "values" / "round-0.json").read_text()).get("rollouts")
        if recorded is not None:
            return int(recorded)
    prompts = config.spi.train_prompts
    return None if prompts is None else prompts * config.spi.round0_rollouts


def _fmt(x: float | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """`x` formatted by `spec` (times `scale`, then `suffix`), or "n/a" where it is missing or not finite."""
    return "n/a" if x is None or not math.isfinite(x) else f"{scale * x:{spec}}{suffix}"


def _ratio(x: float | None) -> str:
    return _fmt(x, ".2f", suffix="×")


def _score(x: float | None, digits: int = 3) -> str:
    return _fmt(x, f".{digits}f")


def _pct(x: float | None) -> str:
    return _fmt(x, ".1f", 100, "%")


def _value(v: Any) -> str:
    """A setting as the sweep's YAML spells it (null, true, a list), not as Python prints it."""
    return str(v) if isinstance(v, str) else json.dumps(v)


def render_table(rows: list[dict[str, Any]], keys: list[str], baseline: str, title: str) -> str:
    """Markdown shaped like the paper's Tables 1 and 3."""
    has_judge = any(r["judge_win_half_tie"] is not None for r in rows)
    has_heldout = any(r.get("reward_model_heldout") for r in rows)
    several_baselines = len({r.get("baseline") for r in rows}) > 1
    headers = [*keys, "data size", "method", "eval win", "eval tie", "eval win+½tie [95% CI]", "RM win+½tie"]
    headers += ["judge win+½tie"] if has_judge else []
    headers += ["eval mean: sample / baseline / SPI"]
    headers += ["RM held out: accuracy, ρ"] if has_heldout else []
    headers += ["tokens vs baseline", "forward tokens vs baseline", "prompts"]
    body = []
    for r in rows:
        lo, hi = r["ci"]
        line: list[object] = [
            *(_value(r["settings"][k]) if k in r["settings"] else "" for k in keys),
            r["data_size"] if r["data_size"] is not None else "n/a",
            r["method"],
        ]
        line += [_pct(r["win"]), _pct(r["tie"]), f"{_pct(r['win_half_tie'])} [{_pct(lo)}, {_pct(hi)}]"]
        line += [_pct(r["reward_win_half_tie"])]
        line += [_pct(r["judge_win_half_tie"])] if has_judge else []
        means = r.get("eval_means", {})
        cells = [_score(means.get(name)) for name in ("sample", "baseline", "spi")]
        if several_baselines:
            cells[1] += f" ({r.get('baseline')})"
        line += [" / ".join(cells)]
        heldout = r.get("reward_model_heldout")
        held = f"{_score(heldout['accuracy'])}, {_score(heldout['spearman'], 2)}" if heldout else "n/a"
        line += [held] if has_heldout else []
        line += [_ratio(r["tokens_vs_baseline"]), _ratio(r.get("forward_tokens_vs_baseline")), r["prompts"]]
        body.append(line)
    return (
        f"# {title}: SPI vs {baseline}\n\n"
        "eval = the held-out evaluator (never guides; the paper's held-out RM columns), RM = the reward model that "
        "guides and picks; win + ½ tie per prompt, 95% bootstrap interval; data size = rollouts V_0 was trained on "
        "(training prompts × rollouts); tokens = generated tokens of SPI over the baseline's; forward tokens = tokens "
        "every model ran (policy prefill and decode, end-token peeks, value and reward models) over the baseline's "
        "(n/a: recorded before they were counted); eval mean = the evaluator's mean score of a plain sample, the "
        "baseline (named where cells differ) and SPI (n/a: not run); RM held out = a learned reward model's pair "
        "accuracy and within-prompt Spearman with its labeller on held-out training prompts (reward: train only)."
        "\n\n" + markdown_table(headers, body)
    )


def _label(settings: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_value(settings[k])}" for k in keys if k in settings) or "all"


def _strategy(settings: dict[str, Any]) -> str:
    selection = settings.get("spi.selection", "diversity")
    names = {"diversity": "beam,\ndiversity-first", "top": "beam,\nplain top-W"}
    if selection == "softmax":
        return f"softmax T={settings.get('spi.temperature', 1.0)}"
    return names.get(selection, str(selection))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_chunk(rows: list[dict[str, Any]], keys: list[str], baseline: str, path: Path) -> None:
    """Figure 5's shape: win + ½ tie against the baseline by chunk length L, one line per other setting."""
    plt = _plt()
    others = [k for k in keys if k != "spi.chunk"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_label(r["settings"], others), []).append(r)
    for label, group in groups.items():
        group = sorted(group, key=lambda r: r["settings"]["spi.chunk"])
        xs = [r["settings"]["spi.chunk"] for r in group]
        ys = [100 * r["win_half_tie"] for r in group]
        err = np.array([[y - 100 * r["ci"][0] for y, r in zip(ys, group, strict=True)],
                        [100 * r["ci"][1] - y for y, r in zip(ys, group, strict=True)]])  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"evaluator ({label})")
        judged = [(x, r["judge_win_half_tie"]) for x, r in zip(xs, group, strict=True)]
        judged = [(x, y) for x, y in judged if y is not None]
        if judged:
            ax.plot([x for x, _ in judged], [100 * y for _, y in judged], "s--", label=f"LLM judge ({label})")
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 100)
    ax.set_xscale("log", base=2)
    chunks = sorted({r["settings"]["spi.chunk"] for r in rows})
    ax.set_xticks(chunks, [str(c) for c in chunks])
    ax.set_xlabel("chunk length L (tokens)")
    ax.set_ylabel(f"win + ½ tie vs {baseline} (%)")
    ax.set_title("SPI by chunk length (Figure 5 shape)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(rows: list[dict[str, Any]], keys: list[str], baseline: str, path: Path, strategies: bool) -> None:
    """Figure 4's shape (strategies against the baseline) or, for other grids, one bar per cell."""
    plt = _plt()
    others = [k for k in keys if k not in ("spi.selection", "spi.temperature")] if strategies else keys
    labels = [
        (_strategy(r["settings"]) + (f"\n{_label(r['settings'], others)}" if others else ""))
        if strategies
        else _label(r["settings"], keys)
        for r in rows
    ]
    ys = [100 * r["win_half_tie"] for r in rows]
    err = np.array([[y - 100 * r["ci"][0] for y, r in zip(ys, rows, strict=True)],
                    [100 * r["ci"][1] - y for y, r in zip(ys, rows, strict=True)]])  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.8))
    ax.bar(range(len(rows)), ys, yerr=err, capsize=4, color="#1f77b4")
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 100)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(f"win + ½ tie vs {baseline} (%)")
    ax.set_title("SPI by sampling strategy (Figure 4 shape)" if strategies else "SPI by sweep cell")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def setting(config: Any, dotted: str) -> Any:
    """The resolved value of a dotted config key."""
    node = config.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def varying_keys(cells: list[Cell]) -> list[str]:
    """Setting keys that take more than one value across the cells, in spec order."""
    keys = list(dict.fromkeys(k for c in cells for k in c.settings))
    return [k for k in keys if len({json.dumps(c.settings.get(k)) for c in cells}) > 1]


def write_sweep_report(spec: SweepSpec, folder: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    """table.md, table.json and the plots, from every finished cell; returns the rows."""
    keys = varying_keys(cells)
    rows: list[dict[str, Any]] = []
    baselines = set()
    for cell in cells:
        results_file = cell.path / "results.json"
        if not results_file.is_file():
            continue
        baseline = spec.baseline or f"bon-{cell.config.spi.candidates}"
        baselines.add(baseline)
        results = json.loads(results_file.read_text(encoding="utf-8"))["results"]
        settings = {k: setting(cell.config, k) for k in keys}
        for row in cell_rows(settings, cell.config, results, baseline, cell.path):
            rows.append({"cell": cell.key, **row})
    if not rows:
        return rows
    baseline = " / ".join(sorted(baselines))
    title = folder.name
    atomic_write_text(folder / "table.md", render_table(rows, keys, baseline, title))
    atomic_write_json(folder / "table.json", {"baseline": baseline, "varying": keys, "rows": rows})
    last = [r for r in rows if r["round"] == max(x["round"] for x in rows if x["cell"] == r["cell"])]
    chunks = {r["settings"].get("spi.chunk") for r in last}
    if "spi.chunk" in keys and len(chunks) > 1:
        plot_chunk(last, keys, baseline, folder / "fig5_chunk.png")
    strategies = any(k in keys for k in ("spi.selection", "spi.temperature"))
    if strategies or "spi.chunk" not in keys:
        name = "fig4_strategies.png" if strategies else "win_rate_by_cell.png"
        plot_bars(last, keys, baseline, folder / name, strategies)
    return rows
