"""Rebuild the reward head shipped for the default policy (`reward: default`, `src/spi_align/data/default_reward/`).

A Bradley–Terry head on SmolLM2-135M-Instruct's end-of-turn state, fitted by `train_reward_head_on_states` (the
procedure of `reward: train`: weight decay chosen on the choice prompts' pairs, held-out figures on prompts no choice
saw) on the round-0 tree rollouts of task 1 (`results/task1-round0`: 459 "fit" training prompts, 64 new tokens),
labelled by the similarity evaluator, leaving out every training prompt the demo uses (the first 32 of the train
split), so that the demo's figures for it stay held out. Writes `spi_reward.json`, `head.safetensors`,
`training_prompts.json` (the ids it was fitted on) and `metrics.json` (its held-out figures on task 1).

    python results/reward-default/build.py runs/task1-round0 runs/task1-prompts/fit.jsonl src/spi_align/data/default_reward
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from spi_align.config import DataConfig, RewardTrainConfig
from spi_align.data.assets import default_policy_dir
from spi_align.data.prompts import load_prompts
from spi_align.experiment.demo import DEMO_DEFAULTS
from spi_align.runs.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.scoring.reward_model import HEAD_FILE, SPEC_FILE, RewardModel
from spi_align.scoring.train_reward import train_reward_head_on_states
from spi_align.values.prefix_states import load_states
from spi_align.values.round import flatten_rollouts


def main(run_dir: str, fit_file: str, out: str) -> None:
    run, target = Path(run_dir), Path(out)
    train = load_prompts(DataConfig(prompts=fit_file, split="train"))
    demo = {p.id for p in load_prompts(DataConfig(split="train", limit=DEMO_DEFAULTS["spi"]["train_prompts"]))}
    prompts, tokens, _ = flatten_rollouts(read_jsonl(run / "rollouts-0.jsonl"), {p.id: p for p in train})
    states = load_states(run / "rollouts-0.states")
    keep = [i for i, p in enumerate(prompts) if p.id not in demo]
    tokenizer = AutoTokenizer.from_pretrained(default_policy_dir())
    texts = tokenizer.batch_decode([tokens[i] for i in keep], skip_special_tokens=True)
    kept = [prompts[i] for i in keep]
    labels = [float(s) for s in make_scorer("similarity").score(kept, texts)]
    ends = torch.stack([states[i].closed[-1] for i in keep]).float()
    model = RewardModel(AutoModel.from_pretrained(default_policy_dir()), tokenizer, source="default")
    metrics = train_reward_head_on_states(model, ends, [p.id for p in kept], labels, RewardTrainConfig(), seed=0)
    ids = sorted({p.id for p in kept})
    metrics |= {"training_prompts": len(ids), "rollouts": len(keep), "left_out_demo_prompts": len(demo)}
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, with_backbone=False)  # spi_reward.json (backbone: default) and the head; no tokenizer kept
        target.mkdir(parents=True, exist_ok=True)
        for name in (SPEC_FILE, HEAD_FILE):
            shutil.copyfile(Path(tmp) / name, target / name)
    (target / "training_prompts.json").write_text(json.dumps(ids) + "\n")
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
