"""Value ablation on a finished run's round-0 rollouts: which lever moves held-out within-prompt Spearman.

Reads the run's saved prefix states (h_t after y_1..t, e_t after y_1..t + end token, at the search's decision
lengths) and reward head, then fits each variant on 80% of the training prompts and ranks the other 20% (the same
split as the run's metrics) against the final reward r and against the held-out evaluator:

  eq12 on h_t            a linear head on the policy's state, eq. 12 target (r centred per prompt and length)
  partial reward R_t     the reward head on e_t: no training
  eq12 on e_t            a linear head on the closed state, eq. 12 target
  anchored (h_t)         R_t + a head on h_t fitted to the residual r - R_t
  anchored (e_t)         R_t + a head on e_t fitted to the residual (what spi.value=anchored does, alpha = 1)

Usage: python ablation_values.py RUN_DIR > ablation_values.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from spi_align.config import Config, DataConfig, build_config
from spi_align.data import load_prompts
from spi_align.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.values.anchored import boundary_rows, centred, decision_lengths
from spi_align.values.prefix_states import load_states
from spi_align.values.round import heldout_split
from spi_align.values.train import within_prompt_spearman

torch.set_num_threads(1)
run = Path(sys.argv[1])
cfg = build_config(Config, str(run / "config.yaml"), [])
states = load_states(run / "rollouts-0.states")
train = {p.id: p for p in load_prompts(DataConfig(split="train"))}
prompts, texts = [], []
for record in read_jsonl(run / "rollouts-0.jsonl"):
    for cand in record["candidates"]:
        if cand["token_ids"]:
            prompts.append(train[record["id"]])
            texts.append(cand["text"])
tensors = load_file(run / "reward_model" / "head.safetensors")
w, b = tensors["weight"][0].float(), float(tensors["bias"][0])
ends = torch.stack([s.closed[-1] for s in states]).float()
final = (ends @ w + b).tolist()
evaluator = make_scorer(cfg.evaluator).score(prompts, texts)
groups = [p.id for p in prompts]
lengths = decision_lengths(cfg.spi.chunk, cfg.generation.max_new_tokens)
_, test_idx = heldout_split(groups, cfg.seed)
held = {groups[i] for i in test_idx}

x_e, r, keys, index = boundary_rows(states, lengths, final, groups)
x_h = torch.stack(
    [states[i].hidden[states[i].lengths.index(t)] for i, (_, t) in zip(index, keys, strict=True)]
).float()
anchor = x_e @ w + b
ev = torch.tensor([evaluator[i] for i in index])
test = torch.tensor([k[0] in held for k in keys])
fkeys = [k for k, h in zip(keys, test.tolist(), strict=True) if not h]
tkeys = [k for k, h in zip(keys, test.tolist(), strict=True) if h]


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float):
    xc = centred(x, fkeys)
    mu, sd = xc.mean(0), xc.std(0).clamp(min=1e-6)
    z = (xc - mu) / sd
    coef = torch.linalg.solve(z.T @ z + lam * torch.eye(z.shape[1]), z.T @ y)
    return lambda xn: ((xn - mu) / sd) @ coef


def score(values: torch.Tensor, target: torch.Tensor, t: int) -> float:
    rows = [j for j, k in enumerate(tkeys) if k[1] == t]
    return within_prompt_spearman(values[rows].tolist(), target[rows].tolist(), [tkeys[j][0] for j in rows])


yc = centred(r[~test], fkeys)
res = centred(r[~test] - anchor[~test], fkeys)
variants = {"partial reward R_t": anchor[test]}
for lam in (100.0, 1000.0, 10000.0):
    variants[f"eq12 on h_t (ridge {lam:g})"] = ridge(x_h[~test], yc, lam)(x_h[test])
    variants[f"eq12 on e_t (ridge {lam:g})"] = ridge(x_e[~test], yc, lam)(x_e[test])
    variants[f"anchored, residual on h_t (ridge {lam:g})"] = anchor[test] + ridge(x_h[~test], res, lam)(x_h[test])
    variants[f"anchored, residual on e_t (ridge {lam:g})"] = anchor[test] + ridge(x_e[~test], res, lam)(x_e[test])
head_row = " | ".join(f"vs r at {t}" for t in lengths) + " | " + " | ".join(f"vs evaluator at {t}" for t in lengths)
print(f"Held-out within-prompt Spearman, {len(held)} held-out training prompts of {len(set(groups))}, "
      f"{len(tkeys)} held-out states.\n")
print(f"| value | {head_row} |")
print("|---" * (1 + 2 * len(lengths)) + "|")
for name, values in variants.items():
    cells = [f"{score(values, r[test], t):.3f}" for t in lengths] + [f"{score(values, ev[test], t):.3f}" for t in lengths]
    print(f"| {name} | " + " | ".join(cells) + " |")
