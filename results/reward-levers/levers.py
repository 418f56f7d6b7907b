"""Issue 18, part 3: which lever makes the reward proxy agree with the evaluator, on task 1.

Reads a finished round 0 of `results/task1-round0` (its rollouts and prefix states in `runs/task1-round0`) and fits
reward proxies on the frozen policy's states in several ways. Every proxy is judged the same way: the measurement
issue's split of the 459 fit prompts (`prompt_split`, seed 0) into fit / choice / held-out prompts; every setting
(weight decay, layer, margin, ridge α) is chosen on the choice prompts' pairs, the chosen proxy is refitted on fit +
choice and read on the held-out prompts only: pair accuracy over every held-out ordered pair whose labels differ,
and the within-prompt Spearman with the evaluator's labels (prompts with constant predictions count 0).

Levers: features (the end state the reward head reads today, the state before the end token, the mean over the
closed prefixes, the end state at a middle layer chosen on the choice prompts), pairs kept by label margin,
pointwise (ridge on per-prompt centred labels) vs pairwise (Bradley–Terry) loss, and data size (a share of the fit
prompts). Writes `levers.md` and `levers.json` beside this script.

    python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from spi_align.config import DataConfig, RewardTrainConfig
from spi_align.core.records import Prompt
from spi_align.data.prompts import load_prompts, prompt_split
from spi_align.runs.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.scoring.ranking import prompt_spearman
from spi_align.scoring.train_reward import all_pairs, train_reward_head_on_states
from spi_align.values.prefix_states import load_states
from spi_align.values.round import flatten_rollouts

HERE = Path(__file__).parent
SEED = 0


def bt(states: torch.Tensor, groups: list[str], labels: list[float], pairs=None) -> dict:
    """Bradley–Terry head on `states` by the run's own procedure (weight decay chosen on the choice prompts)."""
    model = SimpleNamespace(head=torch.nn.Linear(states.shape[1], 1))
    return train_reward_head_on_states(model, states, groups, labels, RewardTrainConfig(), SEED, pairs)


def ridge(states: torch.Tensor, groups: list[str], labels: list[float]) -> dict:
    """Pointwise: ridge regression of the per-prompt centred label on standardised states, α chosen on the choice
    prompts by within-prompt Spearman, refitted on fit + choice, read on the held-out prompts."""
    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    x = states.double().numpy()
    y = np.asarray(labels, dtype=np.float64)
    g = np.asarray(groups)
    centred = y.copy()
    for p in set(groups):
        centred[g == p] -= y[g == p].mean()

    def fit(rows: np.ndarray, alpha: float) -> np.ndarray:
        mu, sd = x[rows].mean(0), x[rows].std(0) + 1e-6
        z = (x[rows] - mu) / sd
        w = np.linalg.solve(z.T @ z + alpha * len(rows) * np.eye(z.shape[1]), z.T @ centred[rows])
        return w / sd

    def score(w: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
        pred = x[rows] @ w
        ranked = prompt_spearman(pred.tolist(), y[rows].tolist(), g[rows].tolist())
        sub = [groups[i] for i in rows]
        pairs = all_pairs(sub, y[rows].tolist())
        acc = float(np.mean([pred[a] > pred[b] for a, b in pairs])) if pairs else float("nan")
        return acc, ranked.mean

    rows_fit = np.flatnonzero(np.isin(g, list(fit_ids)))
    rows_choice = np.flatnonzero(np.isin(g, list(choice_ids)))
    rows_held = np.flatnonzero(np.isin(g, list(held_ids)))
    by_alpha = {a: score(fit(rows_fit, a), rows_choice)[1] for a in (0.01, 0.1, 1.0, 10.0)}
    best = max(by_alpha, key=by_alpha.get)
    acc, rho = score(fit(np.concatenate([rows_fit, rows_choice]), best), rows_held)
    return {"alpha": best, "choice_spearman": by_alpha[best], "heldout_accuracy": acc,
            "heldout_spearman_with_labeller": rho}


@torch.no_grad()
def layer_end_states(run: Path, prompts: list[Prompt], tokens: list[list[int]], batch: int = 16) -> torch.Tensor:
    """(N, layers + 1, H): every layer's state at the last token of [prompt, response, end of turn] (the response's
    own end token when it closed itself): one forward per rollout, every layer kept."""
    from spi_align.config import Config, build_config
    from spi_align.hf.batches import pad_batch, positions_from_mask
    from spi_align.policy.load import load_policy

    cfg = build_config(Config, run / "config.yaml", [])
    policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
    eos = {int(e) for e in policy.eos_ids.tolist()}
    encoded = dict(zip([p.id for p in prompts], policy.prompt_ids(prompts), strict=True))
    out = []
    for start in range(0, len(tokens), batch):
        seqs = []
        for p, r in zip(prompts[start : start + batch], tokens[start : start + batch], strict=True):
            seqs.append(list(encoded[p.id]) + list(r) + ([] if r and r[-1] in eos else [int(policy.end_id)]))
        ids, mask = pad_batch(seqs, policy.pad_id, "left", policy.device)
        hs = policy.backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1]),
            output_hidden_states=True, use_cache=False,
        ).hidden_states
        out.append(torch.stack([h[:, -1].float().cpu() for h in hs], dim=1))
    return torch.cat(out)


def main(run_dir: str, fit_file: str) -> None:
    run = Path(run_dir)
    train = load_prompts(DataConfig(prompts=fit_file, split="train"))
    rollouts = read_jsonl(run / "rollouts-0.jsonl")
    prompts, tokens, _ = flatten_rollouts(rollouts, {p.id: p for p in train})
    states = load_states(run / "rollouts-0.states")
    groups = [p.id for p in prompts]
    from transformers import AutoTokenizer

    from spi_align.data.assets import default_policy_dir

    texts = AutoTokenizer.from_pretrained(default_policy_dir()).batch_decode(tokens, skip_special_tokens=True)
    labels = [float(s) for s in make_scorer("similarity").score(prompts, texts)]
    end = torch.stack([s.closed[-1] for s in states]).float()
    before = torch.stack([s.hidden[-1] for s in states]).float()
    mean_closed = torch.stack([s.closed.mean(0) for s in states]).float()
    rows: list[dict] = []

    def lever(name: str, setting: str, fn) -> None:
        t0 = time.process_time()
        m = fn()
        rows.append({"lever": name, "setting": setting, "cpu_s": round(time.process_time() - t0, 1), **m})
        print(json.dumps(rows[-1]), flush=True)

    lever("baseline", "Bradley–Terry head on the end state (today's reward: train)", lambda: bt(end, groups, labels))
    lever("features", "state before the end token", lambda: bt(before, groups, labels))
    lever("features", "mean of the closed prefixes (16/32/48/end)", lambda: bt(mean_closed, groups, labels))
    lever("features", "end state ‖ mean closed", lambda: bt(torch.cat([end, mean_closed], 1), groups, labels))
    lever("loss", "pointwise ridge on centred labels, end state", lambda: ridge(end, groups, labels))
    lever("loss", "pointwise ridge on centred labels, mean closed", lambda: ridge(mean_closed, groups, labels))

    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    pairs = all_pairs(groups, labels)
    gaps = [abs(labels[a] - labels[b]) for a, b in pairs]
    for q in (0.25, 0.5):
        cut = float(np.quantile(gaps, q))
        kept = [pr for pr, d in zip(pairs, gaps, strict=True) if d >= cut or groups[pr[0]] not in fit_ids]
        lever("pairs by margin", f"fit pairs with label gap ≥ {cut:.3f} (top {1 - q:.0%}); choice, held-out all",
              lambda kept=kept: bt(end, groups, labels, kept))
    for share in (0.25, 0.5):
        keep_fit = set(sorted(fit_ids)[: int(len(fit_ids) * share)])
        kept = [pr for pr in pairs if groups[pr[0]] in keep_fit or groups[pr[0]] not in fit_ids]
        lever("data size", f"{share:.0%} of the fit prompts", lambda kept=kept: bt(end, groups, labels, kept))

    t0 = time.process_time()
    layers = layer_end_states(run, prompts, tokens)
    pass_s = time.process_time() - t0
    by_layer = {k: bt(layers[:, k], groups, labels) for k in range(4, layers.shape[1], 4)}
    best = max(by_layer, key=lambda k: by_layer[k]["choice_accuracy"])
    rows.append({"lever": "features", "setting": f"end state at layer {best} of {layers.shape[1] - 1} (chosen on "
                 "choice pairs among every 4th)", "cpu_s": round(pass_s, 1), **by_layer[best],
                 "choice_accuracy_by_layer": {k: v["choice_accuracy"] for k, v in by_layer.items()}})
    print(json.dumps(rows[-1]), flush=True)
    mid = layers[:, best]
    lever("features", f"layer {best} end state ‖ last-layer mean closed",
          lambda: bt(torch.cat([mid, mean_closed], 1), groups, labels))

    (HERE / "levers.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| lever | setting | held-out pair accuracy | held-out Spearman with the evaluator | CPU s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lever']} | {r['setting']} | {r['heldout_accuracy']:.3f} | "
                     f"{r['heldout_spearman_with_labeller']:.3f} | {r['cpu_s']} |")
    lines.append(f"\n{len(fit_ids)} fit, {len(choice_ids)} choice, {len(held_ids)} held-out prompts; "
                 f"{len(prompts)} rollouts, {len(pairs)} ordered pairs whose labels differ.")
    (HERE / "levers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
