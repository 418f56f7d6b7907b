"""DPO, the paper's training-time baseline: TRL's `DPOTrainer` on the preference pairs the reward model saw (in
`spi run`, the one pair list of `SPIRun.round0_preferences`: `scoring.train_reward.preference_pairs` of round 0's
samples labelled by the evaluator, every ordered pair whose labels differ by default).

A copy of the policy is tuned; the reference is the untuned policy (its log-probabilities are computed once before
training, so no second copy is held). CPU-friendly settings: fp32, no gradient checkpointing, a few steps, no
hub, no loggers. The tuned model is saved as safetensors with the policy's tokenizer and generation config, so it
loads as a policy (plain sampling = the DPO baseline) and, with the untuned policy, as the tuned/reference pair
of the implicit reward (BoN-I, weak-to-strong search).

Written against TRL 1.x (`DPOConfig` + `DPOTrainer(model, args=..., train_dataset=..., processing_class=...)`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.hf.chat import messages, render
from spi_align.scoring.implicit import ImplicitReward

PreferencePair = tuple[Prompt, str, str]
"""(prompt, chosen response, rejected response): the texts of a `scoring.train_reward.preference_pairs` pair."""


def preference_dataset(pairs: Sequence[PreferencePair], chat: bool) -> Any:
    """A `datasets.Dataset` in TRL's preference format: conversational (chat template; the prompt's earlier turns
    included, `hf.chat.messages`) or plain text (the turns joined, `hf.chat.render`)."""
    from datasets import Dataset

    rows: list[dict[str, Any]]
    if chat:
        rows = [
            {
                "prompt": messages(p),
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in pairs
        ]
    else:
        rows = [{"prompt": render(None, p, templated=False), "chosen": c, "rejected": r} for p, c, r in pairs]
    return Dataset.from_list(rows)


def margins(reward: ImplicitReward, pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """Implicit-reward margin r(x, chosen) − r(x, rejected) of each pair."""
    prompts = [p for p, _, _ in pairs]
    chosen = torch.tensor(reward.score(prompts, [c for _, c, _ in pairs]))
    rejected = torch.tensor(reward.score(prompts, [r for _, _, r in pairs]))
    return chosen - rejected


def train_dpo(
    policy: PreTrainedModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    steps: int = 40,
    batch_size: int = 4,
    lr: float = 5e-6,
    beta: float = 0.1,
    max_length: int = 512,
    seed: int = 0,
    chat_template: bool = True,
) -> dict[str, Any]:
    """Tune a copy of `policy` by DPO on `pairs`; save it to `out_dir`; return training metrics.

    The metrics include the implicit-reward margin (β = `beta`, end-of-turn included) on the training pairs
    before (0 by construction) and after tuning, and the share of pairs where the chosen response wins.
    """
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise SpiError("DPO: no preference pairs to train on")
    chat = chat_template and getattr(tokenizer, "chat_template", None) is not None
    tokenizer = copy.deepcopy(tokenizer)  # the trainer may set a pad token: leave the policy's tokenizer alone
    tuned = copy.deepcopy(policy).requires_grad_(True).train()
    device = next(tuned.parameters()).device
    with tempfile.TemporaryDirectory(prefix="spi-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="constant",
            beta=beta,
            max_length=max_length,
            precompute_ref_log_probs=True,  # reference = the untuned copy, scored once before the first step
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=device.type == "cpu",
            report_to="none",
            save_strategy="no",
            logging_steps=max(1, steps // 10),
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=seed,
            data_seed=seed,
        )
        trainer = DPOTrainer(
            model=tuned, args=args, train_dataset=preference_dataset(pairs, chat), processing_class=tokenizer
        )
        result = trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
    assert isinstance(trainer.model, PreTrainedModel)  # the model handed to the trainer (no PEFT wrapper)
    tuned = trainer.model.eval().requires_grad_(False)
    tuned.generation_config = copy.deepcopy(policy.generation_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tuned.save_pretrained(out)
    tokenizer.save_pretrained(out)
    implicit = ImplicitReward(tuned, policy, tokenizer, beta=beta, chat_template=chat_template)
    margin = margins(implicit, pairs)
    return {
        "pairs": len(pairs),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "beta": beta,
        "train_loss": float(result.training_loss),
        "log": history,
        "train_margin": float(margin.mean()),
        "train_accuracy": float((margin > 0).float().mean()),
    }
