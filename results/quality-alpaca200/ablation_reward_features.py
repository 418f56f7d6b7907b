"""Which features of a response let a linear reward model agree with the evaluator: a probe on this run's data.

For each of the 4,840 round-0 samples, the evaluator's label (reference similarity) and the policy's states saved
in `rollouts-0.states`: e_t (the state after the first t tokens closed with the end token) at t = 16, 32, 48 and
the end, and h_t (the state after the first t tokens). A ridge regression on within-prompt-centred features and
labels is fitted on 484 training prompts and read on the other 121 (the run's held-out split); the number is the
held-out within-prompt Spearman with the evaluator. The run's Bradley–Terry head reads the end state e_end only
(0.234 in reward_model.json).

Usage: python ablation_reward_features.py RUN_DIR > ablation_reward_features.md
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from spi_align.config import DataConfig
from spi_align.data import load_prompts
from spi_align.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.values.anchored import centred
from spi_align.values.prefix_states import load_states
from spi_align.values.train import within_prompt_spearman

torch.set_num_threads(1)
run = Path(sys.argv[1])
states = load_states(run / "rollouts-0.states")
groups, texts = [], []
for record in read_jsonl(run / "rollouts-0.jsonl"):
    for cand in record["candidates"]:
        if cand["token_ids"]:
            groups.append(record["id"])
            texts.append(cand["text"])
train = {p.id: p for p in load_prompts(DataConfig(split="train"))}
labels = torch.tensor(make_scorer("similarity").score([train[g] for g in groups], texts))
ids = sorted(set(groups))
random.Random(0).shuffle(ids)
held = set(ids[: len(ids) // 5])
test = torch.tensor([g in held for g in groups])
test_groups = [g for g in groups if g in held]


def probe(x: torch.Tensor, ridge: float) -> float:
    xc, yc = centred(x, groups), centred(labels, groups)
    mu, sd = xc[~test].mean(0), xc[~test].std(0).clamp(min=1e-6)
    z = (xc - mu) / sd
    w = torch.linalg.solve(z[~test].T @ z[~test] + ridge * torch.eye(z.shape[1]), z[~test].T @ yc[~test])
    return within_prompt_spearman((z[test] @ w).tolist(), labels[test].tolist(), test_groups)


end = torch.stack([s.closed[-1] for s in states]).float()
mean_closed = torch.stack([s.closed.float().mean(0) for s in states])
mean_hidden = torch.stack([s.hidden.float().mean(0) for s in states])
features = {
    "e_end (what the reward head reads)": end,
    "mean of e_16, e_32, e_48, e_end": mean_closed,
    "mean of h_16, h_32, h_48, h_end": mean_hidden,
    "e_end and the mean of e_t": torch.cat([end, mean_closed], 1),
    "e_end and the mean of h_t": torch.cat([end, mean_hidden], 1),
}
print("| features | ridge 100 | ridge 1000 | ridge 10000 |\n|---|---|---|---|")
for name, x in features.items():
    print(f"| {name} | " + " | ".join(f"{probe(x, r):.3f}" for r in (100.0, 1000.0, 10000.0)) + " |")
