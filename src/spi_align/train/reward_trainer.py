"""A reward model tuned beyond its head: Bradley–Terry on the top layers with transformers' `Trainer`
(`reward_model.layers` > 0; the head alone on frozen features is `scoring/train_reward.py`).

The model is a transformers sequence classifier with one label on the policy's weights
(`AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)`). Its score layer starts as the
Bradley–Terry head fitted on the frozen backbone's features of the pairs it is tuned on
(`scoring.train_reward.fit_bradley_terry`, with the weight decay the head-only fit chooses on the choice prompts);
then everything is frozen but the top n transformer layers, the final norm and the score layer. Each text is the
classifier's own rendering of the conversation (`ClassifierReward.encode`: the chat template's whole turn), read at
the turn's end token (the pad token is `reward_model.reading_pad_id`'s), so the folder saved is exactly the reward
that `reward=<folder>` and plain `AutoModelForSequenceClassification.from_pretrained(folder)` give.

Training is `PairTrainer`, a `Trainer` whose loss is −log σ(r_chosen − r_rejected) averaged over a batch of pairs
(the chosen texts then the rejected ones, right-padded, one forward), with AdamW at a constant learning rate (so
stopping after e epochs is training e epochs). Being a plain `Trainer`, `accelerate launch` spreads it over GPUs and
nodes (DDP, DeepSpeed ZeRO-1/2, FSDP with full state dicts and `use_orig_params`; the frozen features are computed
on each process before the model is wrapped): `experiment/tune_reward.py` is the launchable step.

Every choice is made on other prompts than the figures reported (`data/prompts.py:prompt_split`): each (learning
rate, weight decay) candidate is tuned on the fit prompts' pairs and read on the choice prompts' pairs after every
epoch; the best (learning rate, weight decay, epochs) is tuned again on every pair but the held-out prompts' and read
there (`heldout_accuracy`, `heldout_spearman_with_labeller`, the names the head fit reports), and last on all pairs:
the model saved. The head-only fit's held-out figures come along as `head_heldout_*`. `RewardTuner.measure` stops
before the last tune: the figures alone, for comparing settings.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from spi_align.config import RewardTrainConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.prompts import prompt_split
from spi_align.hf.batches import pad_batch
from spi_align.hf.models import backbone_of, load_model_config, to_device, top_layers
from spi_align.scoring.classifier import ClassifierReward, score_head
from spi_align.scoring.ranking import prompt_spearman
from spi_align.scoring.reward_model import reading_pad_id
from spi_align.scoring.train_reward import bradley_terry_loss, fit_bradley_terry, train_reward_head_on_states

log = logging.getLogger(__name__)

Pair = tuple[int, int]


@dataclass
class RewardPairs:
    """What a reward model is tuned on: samples (prompt, response, the labeller's score) and (chosen, rejected)
    sample-index pairs within prompts (`scoring.train_reward.preference_pairs`)."""

    prompts: list[Prompt]
    responses: list[str]
    labels: list[float]
    pairs: list[Pair]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (prompts without their references: a reward model never reads them)."""
        samples = [
            {"id": p.id, "prompt": p.text, "history": [list(t) for t in p.history], "response": r, "label": y}
            for p, r, y in zip(self.prompts, self.responses, self.labels, strict=True)
        ]
        return {"samples": samples, "pairs": [list(pair) for pair in self.pairs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardPairs:
        samples = data["samples"]
        prompts = [Prompt(s["id"], s["prompt"], history=tuple((r, c) for r, c in s["history"])) for s in samples]
        responses = [s["response"] for s in samples]
        labels = [float(s["label"]) for s in samples]
        return cls(prompts, responses, labels, [(int(a), int(b)) for a, b in data["pairs"]])

    @classmethod
    def load(cls, path: str | Path) -> RewardPairs:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise SpiError(f"cannot read preference pairs from {path}: {exc}") from None


def check_layers(source: str, layers: int) -> None:
    """One-line SpiError when the policy at `source` has fewer than `layers` transformer layers (reads its config)."""
    if layers == 0:
        return
    _, config = load_model_config(source, what="policy")
    count = config.get_text_config().num_hidden_layers
    if layers > count:
        raise SpiError(f"reward_model.layers={layers}, but the policy '{source}' has {count} layers")


def freeze_but_top(model: PreTrainedModel, layers: int) -> list[str]:
    """Freeze `model` but its top `layers` transformer layers, what follows them (the final norm) and the score
    layer; returns the names of the parameters left to train."""
    model.requires_grad_(False)
    for module in [*top_layers(backbone_of(model), layers), score_head(model)]:
        module.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


class PairTrainer(Trainer):
    """`Trainer` on Bradley–Terry pairs: a training batch is the chosen texts then the rejected ones (`collate`);
    an evaluation batch is samples with their `sample_index`, predicted as (reward, index)."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """−log σ(r_chosen − r_rejected), averaged over the batch's pairs."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        rewards = outputs.logits[:, 0].float()
        half = rewards.shape[0] // 2
        loss = bradley_terry_loss(rewards[:half], rewards[half:])
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(no loss, the samples' rewards, their indices): gathered over processes by the evaluation loop."""
        inputs = self._prepare_inputs(inputs)
        index = inputs.pop("sample_index")
        with torch.no_grad():
            rewards = model(**inputs).logits[:, 0].float()
        return None, rewards, index


@dataclass
class _Items(torch.utils.data.Dataset):
    """Training pairs ({chosen, rejected} token ids) or samples ({input_ids, sample_index})."""

    ids: list[list[int]]
    pairs: list[Pair] | None = None
    samples: list[int] | None = None

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.samples or [])

    def __getitem__(self, k: int) -> dict[str, Any]:
        if self.pairs is not None:
            a, b = self.pairs[k]
            return {"chosen": self.ids[a], "rejected": self.ids[b]}
        i = (self.samples or [])[k]
        return {"input_ids": self.ids[i], "sample_index": i}


class _Collate:
    """Right-padded batches with the reading pad id: pairs as chosen rows then rejected rows; samples with their
    indices."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "chosen" in items[0]:
            seqs = [it["chosen"] for it in items] + [it["rejected"] for it in items]
            ids, mask = pad_batch(seqs, self.pad_id, side="right")
            return {"input_ids": ids, "attention_mask": mask}
        ids, mask = pad_batch([it["input_ids"] for it in items], self.pad_id, side="right")
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "sample_index": torch.tensor([it["sample_index"] for it in items]),
        }


def pair_accuracy(rewards: dict[int, float], pairs: Sequence[Pair]) -> float:
    """Share of pairs whose chosen sample gets the higher reward (NaN without pairs)."""
    if not pairs:
        return float("nan")
    return sum(rewards[a] > rewards[b] for a, b in pairs) / len(pairs)


class RewardTuner:
    """One tuning job: the policy's weights, the samples tokenised once, the frozen features, the prompt split."""

    def __init__(
        self, source: str, data: RewardPairs, cfg: RewardTrainConfig, seed: int = 0, device: str = "auto",
        dtype: str = "float32",
    ) -> None:  # fmt: skip
        """`source`: the policy (a folder or hub id); `device`: 'cpu' trains on the CPU, anything else where
        `accelerate` puts each process; `dtype`: the policy's, trained as fp32 weights under bf16/fp16 autocast
        on GPUs."""
        from transformers import AutoTokenizer

        if not data.pairs:
            raise SpiError("no preference pairs: the labeller gave every sample of each prompt the same score")
        check_layers(source, cfg.layers)
        self.source, self.data, self.cfg, self.seed = source, data, cfg, seed
        self.use_cpu = device == "cpu" or not torch.cuda.is_available()
        self.dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.pad_id = reading_pad_id(self.tokenizer)
        self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(self.pad_id)
        model = self.fresh()
        reader = ClassifierReward(model, self.tokenizer)
        self.ids = [
            ids[-reader.max_length :] if reader.max_length else ids
            for ids in reader.encode(data.prompts, data.responses)
        ]
        self.groups = [p.id for p in data.prompts]
        self.features = self._features(model)
        fit, choice, held = prompt_split(self.groups, seed)
        self.split = {  # the pairs of each side of the prompt split
            name: [pair for pair in data.pairs if self.groups[pair[0]] in ids]
            for name, ids in (("fit", fit), ("choice", choice), ("train", fit | choice), ("heldout", held))
        }
        self.heldout_samples = [i for i, g in enumerate(self.groups) if g in held]
        head = train_reward_head_on_states(None, self.features, self.groups, data.labels, cfg, seed, data.pairs)
        self.head_metrics = head
        self.weight_decay = float(head["weight_decay"])
        self.tuned_parameters = 0
        self.probe: PairTrainer | None = None  # `measure`'s model read on the held-out prompts

    def fresh(self) -> PreTrainedModel:
        """The policy's weights as a classifier with one label, fp32, the reading pad id in its config."""
        from transformers import AutoModelForSequenceClassification

        try:
            return AutoModelForSequenceClassification.from_pretrained(
                self.source, num_labels=1, pad_token_id=self.pad_id, dtype=torch.float32
            )
        except (OSError, ValueError) as exc:
            raise SpiError(f"cannot load '{self.source}' as a reward model: {str(exc).splitlines()[0]}") from None

    @torch.no_grad()
    def _features(self, model: PreTrainedModel, batch_size: int = 16) -> torch.Tensor:
        """The frozen backbone's state (N, H) where the classifier reads each sample (its last non-pad token)."""
        # each process of a launch on its own GPU (the launcher's LOCAL_RANK), before the Trainer places it there
        device = torch.device("cpu") if self.use_cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        base = to_device(backbone_of(model), device).eval()
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        out = torch.zeros(len(self.ids), model.config.get_text_config().hidden_size)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = pad_batch([self.ids[i] for i in rows], self.pad_id, side="right", device=device)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()
            for k, i in enumerate(rows):
                read = max(j for j, t in enumerate(self.ids[i]) if t != self.pad_id)
                out[i] = hidden[k, read]
        return out

    def head_on(self, pairs: Sequence[Pair]) -> torch.nn.Linear:
        """The Bradley–Terry head on the frozen features of `pairs` (the tuning's start)."""
        chosen = self.features[[a for a, _ in pairs]]
        rejected = self.features[[b for _, b in pairs]]
        return fit_bradley_terry(chosen, rejected, self.cfg, self.weight_decay, self.seed)

    def tune(
        self, pairs: Sequence[Pair], lr: float, weight_decay: float, epochs: int, watch: Sequence[Pair] = ()
    ) -> tuple[PairTrainer, list[float], list[float]]:
        """Tune a fresh model on `pairs`; returns the trainer, the training loss of each epoch and the accuracy on
        `watch` pairs after each epoch (none without `watch`)."""
        model = self.fresh()
        head = self.head_on(pairs)
        with torch.no_grad():
            score_head(model).weight.copy_(head.weight)
        names = set(freeze_but_top(model, self.cfg.layers))
        self.tuned_parameters = sum(p.numel() for n, p in model.named_parameters() if n in names)
        watched = sorted({i for pair in watch for i in pair})
        accuracy: list[float] = []

        def on_eval(prediction: Any) -> dict[str, float]:
            rewards = _by_index(prediction.predictions, prediction.label_ids)
            accuracy.append(pair_accuracy(rewards, watch))
            return {"accuracy": accuracy[-1]}

        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch, per_device_train_batch_size=self.cfg.tune_batch_size,
                per_device_eval_batch_size=2 * self.cfg.tune_batch_size, learning_rate=lr, weight_decay=weight_decay,
                num_train_epochs=epochs, lr_scheduler_type="constant", warmup_steps=0,
                eval_strategy="epoch" if watch else "no", logging_strategy="epoch", save_strategy="no",
                report_to=[], seed=self.seed, use_cpu=self.use_cpu, disable_tqdm=True, remove_unused_columns=False,
                label_names=["sample_index"], bf16=self.dtype == "bfloat16" and not self.use_cpu,
                fp16=self.dtype == "float16" and not self.use_cpu, ddp_find_unused_parameters=False,
                log_level_replica="passive",  # every tuned parameter is used; replicas log as the caller set up
            )  # fmt: skip
            trainer = PairTrainer(
                model=model, args=args, train_dataset=_Items(self.ids, pairs=list(pairs)),
                eval_dataset=_Items(self.ids, samples=watched) if watch else None, data_collator=_Collate(self.pad_id),
                compute_metrics=on_eval if watch else None,
            )  # fmt: skip
            for callback in (PrinterCallback, ProgressCallback):  # the library logs, it does not print
                trainer.remove_callback(callback)
            trainer.train()
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        log.info("tuned on %d pairs (lr %g, decay %g): loss by epoch %s", len(pairs), lr, weight_decay, losses)
        return trainer, losses, accuracy

    def rewards(self, trainer: PairTrainer, samples: Sequence[int]) -> dict[int, float]:
        """The tuned model's reward of each sample (through the trainer: every process takes part)."""
        trainer.compute_metrics = None
        out = trainer.predict(_Items(self.ids, samples=list(samples)))
        return _by_index(out.predictions, out.label_ids)

    def choose(self) -> tuple[float, float, int, dict[str, float]]:
        """(learning rate, weight decay, epochs) with the best accuracy on the choice prompts' pairs, tuned on the
        fit prompts' pairs; the first candidate and every epoch when either side has no pair."""
        cfg = self.cfg
        by_setting: dict[str, float] = {}
        best: tuple[float, float, float, int] | None = None
        if self.split["fit"] and self.split["choice"]:
            for lr in cfg.tune_lr:
                for wd in cfg.tune_weight_decay:
                    _, _, accuracy = self.tune(self.split["fit"], lr, wd, cfg.tune_epochs, watch=self.split["choice"])
                    for epoch, acc in enumerate(accuracy, start=1):
                        by_setting[f"lr={lr:g} weight_decay={wd:g} epochs={epoch}"] = acc
                        if best is None or acc > best[0]:
                            best = (acc, lr, wd, epoch)
        if best is None:
            return cfg.tune_lr[0], cfg.tune_weight_decay[0], cfg.tune_epochs, by_setting
        return best[1], best[2], best[3], by_setting

    def measure(self) -> dict[str, Any]:
        """Choose (learning rate, weight decay, epochs) on the choice prompts, tune with them on every pair but the
        held-out prompts' and read the held-out prompts (`heldout_accuracy`, `heldout_spearman_with_labeller`, and
        the head-only fit's `head_heldout_*`): every figure `run` reports but the final model's. Nothing is saved;
        the model read on the held-out prompts stays in `probe` (None without held-out prompts) for `save`."""
        lr, wd, epochs, by_setting = self.choose()
        metrics: dict[str, Any] = {
            "layers": self.cfg.layers,
            "pairs": len(self.data.pairs),
            "heldout_pairs": len(self.split["heldout"]),
            "lr": lr,
            "weight_decay": wd,
            "epochs": epochs,
            "choice_accuracy": by_setting.get(f"lr={lr:g} weight_decay={wd:g} epochs={epochs}", float("nan")),
            "choice_accuracy_by_setting": by_setting,
            "heldout_accuracy": float("nan"),
        }
        self.probe = None
        if self.split["train"] and self.split["heldout"]:
            probe, _, _ = self.tune(self.split["train"], lr, wd, epochs)
            self.probe = probe
            rewards = self.rewards(probe, self.heldout_samples)
            metrics["heldout_accuracy"] = pair_accuracy(rewards, self.split["heldout"])
            ranked = prompt_spearman(
                [rewards[i] for i in self.heldout_samples],
                [self.data.labels[i] for i in self.heldout_samples],
                [self.groups[i] for i in self.heldout_samples],
            )
            metrics["heldout_spearman_with_labeller"] = ranked.mean
            metrics["heldout_ranked_prompts"] = ranked.prompts
            metrics["heldout_constant_prompts"] = ranked.constant
        for key in ("heldout_accuracy", "heldout_spearman_with_labeller"):
            metrics[f"head_{key}"] = self.head_metrics.get(key, float("nan"))
        metrics["tuned_parameters"] = self.tuned_parameters
        return metrics

    def run(self, out: str | Path) -> dict[str, Any]:
        """`measure`, then tune on every pair with the chosen setting and save the model and tokenizer in `out`
        (written by the main process); returns the metrics."""
        metrics = self.measure()
        final, losses, _ = self.tune(self.data.pairs, metrics["lr"], metrics["weight_decay"], metrics["epochs"])
        metrics["train_accuracy"] = pair_accuracy(self.rewards(final, range(len(self.ids))), self.data.pairs)
        metrics["train_loss_by_epoch"] = losses
        metrics["tuned_parameters"] = self.tuned_parameters
        self.save(final, out)
        return metrics

    def save(self, trainer: PairTrainer, out: str | Path) -> None:
        """Save `trainer`'s model and the tokenizer in `out` as a transformers sequence classifier (written by the
        main process)."""
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            self.tokenizer.save_pretrained(str(out))
            (Path(out) / "training_args.bin").unlink(missing_ok=True)  # the trainer's pickle: no part of the model


def _by_index(predictions: Any, indices: Any) -> dict[int, float]:
    values = torch.as_tensor(predictions).reshape(-1).tolist()
    return {int(i): float(v) for i, v in zip(torch.as_tensor(indices).reshape(-1).tolist(), values, strict=True)}


def tune_reward_model(
    source: str, data: RewardPairs, cfg: RewardTrainConfig, out: str | Path, seed: int = 0, device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:  # fmt: skip
    """Tune the top `cfg.layers` layers of a reward model on the policy at `source` by Bradley–Terry on `data` (the
    module docstring) and save it in `out` as a transformers sequence classifier; returns the metrics."""
    return RewardTuner(source, data, cfg, seed, device, dtype).run(out)
