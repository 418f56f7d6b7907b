"""Which of the anchored value's levers moves held-out within-prompt Spearman: the ranking loss and α per length.

Reads a finished run's round-0 rollouts, prefix states (e_t at the decision lengths) and reward head. A seeded
fifth of the training prompts is held out entirely (`heldout_split`, the split the run's metrics use); each
variant is `fit_anchored` on the other four fifths, which chooses its ridge, λ and α on a fifth of *those*, so
the numbers below are on prompts that chose nothing. Spearman is against the final reward r (what V is fitted to)
and against the held-out evaluator (what judges).

With a second run directory whose round 0 was a sampling tree (`spi.tree`) scored by the same reward head, two
more rows fit on *its* rollouts of the same fit prompts (a shared prefix's target: its leaves' mean) and are
read on the same held-out plain rollouts as every other row.

Usage: python ablation_levers.py RUN_DIR [TREE_RUN_DIR] > ablation_levers.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from spi_align.config import Config, DataConfig, build_config
from spi_align.data import load_prompts
from spi_align.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.values.anchored import boundary_rows, decision_lengths, fit_anchored
from spi_align.values.prefix_states import load_states
from spi_align.values.round import heldout_split
from spi_align.values.train import within_prompt_spearman

torch.set_num_threads(1)
run = Path(sys.argv[1])
cfg = build_config(Config, str(run / "config.yaml"), [])


def read_round0(folder: Path) -> tuple[list, list[str], list[str], list[list[int]]]:
    """(prefix states, prompt ids, texts, token ids) of every round-0 rollout of a run."""
    groups, texts, tokens = [], [], []
    for record in read_jsonl(folder / "rollouts-0.jsonl"):
        for cand in record["candidates"]:
            if cand["token_ids"]:
                groups.append(record["id"])
                texts.append(cand["text"])
                tokens.append(cand["token_ids"])
    return load_states(folder / "rollouts-0.states"), groups, texts, tokens


tensors = load_file(run / "reward_model" / "head.safetensors")
anchor = torch.nn.Linear(tensors["weight"].shape[1], 1)
with torch.no_grad():
    anchor.weight.copy_(tensors["weight"].float())
    anchor.bias.copy_(tensors["bias"].float())


def final_rewards(states: list) -> list[float]:
    with torch.no_grad():
        return (torch.stack([s.closed[-1] for s in states]).float() @ anchor.weight[0] + anchor.bias[0]).tolist()


states, groups, texts, tokens = read_round0(run)
final = final_rewards(states)
train = {p.id: p for p in load_prompts(DataConfig(split="train"))}
evaluator = make_scorer(cfg.evaluator).score([train[g] for g in groups], texts)
lengths = decision_lengths(cfg.spi.chunk, cfg.generation.max_new_tokens)
fit_idx, test_idx = heldout_split(groups, cfg.seed)

x, r, keys, index = boundary_rows(
    [states[i] for i in test_idx], lengths, [final[i] for i in test_idx], [groups[i] for i in test_idx]
)
ev = torch.tensor([evaluator[test_idx[i]] for i in index])
with torch.no_grad():
    partial = anchor(x).squeeze(-1)


def score(values: torch.Tensor, target: torch.Tensor, t: int) -> float:
    rows = [j for j, k in enumerate(keys) if k[1] == t]
    return within_prompt_spearman(values[rows].tolist(), target[rows].tolist(), [keys[j][0] for j in rows])


variants: dict[str, torch.Tensor] = {"partial reward R_t (no training)": partial}
chosen: dict[str, str] = {"partial reward R_t (no training)": "—"}
settings = {
    "squared error, one α (last stop's V_0)": dict(rank_weights=(0.0,), per_depth=False),
    "+ ranking loss λ = 1": dict(rank_weights=(1.0,), per_depth=False),
    "+ α per length": dict(rank_weights=(0.0,), per_depth=True),
    "+ both, λ ∈ {0, 1} chosen (the new default)": dict(rank_weights=(0.0, 1.0), per_depth=True),
}
fit_prompts = {groups[i] for i in fit_idx}
sources = {name: (states, final, groups, tokens, fit_idx, kw) for name, kw in settings.items()}
if len(sys.argv) > 2:
    t_states, t_groups, _, t_tokens = read_round0(Path(sys.argv[2]))
    t_fit = [i for i, g in enumerate(t_groups) if g in fit_prompts]
    t_data = (t_states, final_rewards(t_states), t_groups, t_tokens, t_fit)
    sources["tree rollouts [4, 2], leaves' mean, one α"] = (*t_data, dict(rank_weights=(0.0,), per_depth=False))
    sources["tree rollouts + α per length, λ ∈ {0, 1}"] = (*t_data, dict(rank_weights=(0.0, 1.0), per_depth=True))
for name, (f_states, f_final, f_groups, f_tokens, f_idx, kw) in sources.items():
    pick = lambda xs: [xs[i] for i in f_idx]  # noqa: E731, B023
    start = time.perf_counter()
    value, metrics = fit_anchored(
        pick(f_states),
        pick(f_final),
        pick(f_groups),
        anchor,
        lengths,
        cfg.spi.ridge,
        cfg.seed,
        tokens=pick(f_tokens),
        **kw,
    )
    chosen_states = metrics["states"]
    with torch.no_grad():
        lengths_of = torch.tensor([k[1] for k in keys])
        variants[name] = partial + value(x, lengths_of)
    alphas = "/".join(f"{a:g}" for a in value.alphas)
    took = time.perf_counter() - start
    chosen[name] = (
        f"{chosen_states} states; ridge {metrics['ridge']:g}, λ {metrics['rank_weight']:g}, α {alphas} ({took:.0f} s)"
    )

print(
    f"Held-out within-prompt Spearman on {len({groups[i] for i in test_idx})} training prompts held out of "
    f"{len(set(groups))} ({len(keys)} states), each variant fitted on the other prompts.\n"
)
head_row = " | ".join(f"vs r at {t}" for t in lengths) + " | " + " | ".join(f"vs evaluator at {t}" for t in lengths)
print(f"| value | {head_row} | chosen on the fit prompts |")
print("|---" * (2 + 2 * len(lengths)) + "|")
for name, values in variants.items():
    cells = [f"{score(values, r, t):.3f}" for t in lengths] + [f"{score(values, ev, t):.3f}" for t in lengths]
    print(f"| {name} | " + " | ".join(cells) + f" | {chosen[name]} |")
