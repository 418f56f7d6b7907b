"""Which of the anchored value's levers moves held-out within-prompt Spearman: the ranking loss and α per length.

Reads a finished run's round-0 rollouts, prefix states (e_t at the decision lengths) and reward head. A seeded
fifth of the training prompts is held out entirely (`heldout_split`, the split the run's metrics use); each
variant is `fit_anchored` on the other four fifths, which chooses its ridge, λ and α on a fifth of *those*, so
the numbers below are on prompts that chose nothing. Spearman is against the final reward r (what V is fitted to)
and against the held-out evaluator (what judges).

Usage: python ablation_levers.py RUN_DIR > ablation_levers.md
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
states = load_states(run / "rollouts-0.states")
train = {p.id: p for p in load_prompts(DataConfig(split="train"))}
prompts, texts, tokens = [], [], []
for record in read_jsonl(run / "rollouts-0.jsonl"):
    for cand in record["candidates"]:
        if cand["token_ids"]:
            prompts.append(train[record["id"]])
            texts.append(cand["text"])
            tokens.append(cand["token_ids"])
tensors = load_file(run / "reward_model" / "head.safetensors")
anchor = torch.nn.Linear(tensors["weight"].shape[1], 1)
with torch.no_grad():
    anchor.weight.copy_(tensors["weight"].float())
    anchor.bias.copy_(tensors["bias"].float())
    final = (torch.stack([s.closed[-1] for s in states]).float() @ anchor.weight[0] + anchor.bias[0]).tolist()
evaluator = make_scorer(cfg.evaluator).score(prompts, texts)
groups = [p.id for p in prompts]
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
pick = lambda xs: [xs[i] for i in fit_idx]  # noqa: E731
for name, kw in settings.items():
    start = time.perf_counter()
    value, metrics = fit_anchored(
        pick(states), pick(final), pick(groups), anchor, lengths, cfg.spi.ridge, cfg.seed, tokens=pick(tokens), **kw
    )
    with torch.no_grad():
        lengths_of = torch.tensor([k[1] for k in keys])
        variants[name] = partial + value(x, lengths_of)
    alphas = "/".join(f"{a:g}" for a in value.alphas)
    took = time.perf_counter() - start
    chosen[name] = f"ridge {metrics['ridge']:g}, λ {metrics['rank_weight']:g}, α {alphas} ({took:.0f} s)"

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
