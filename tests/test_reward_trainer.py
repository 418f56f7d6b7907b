"""The top-layers reward model (`reward_model.layers` > 0): transformers' `Trainer` on Bradley–Terry pairs, on CPU,
on a tiny random policy: the top layers, the final norm and the score layer move, nothing else does, the loss falls,
and the folder is a standard reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spi_align.config import RewardTrainConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.scoring.reward_model import head_values
from spi_align.scoring.train_reward import preference_pairs
from spi_align.train.reward_trainer import RewardPairs, RewardTuner, check_layers, pair_accuracy, tune_reward_model


def long_is_better(prompts: int = 6, per_prompt: int = 3) -> RewardPairs:
    """Longer answers labelled better: a signal the end-token state can carry."""
    rows = [(Prompt(f"p{i}", f"Tell me something, number {i}."), k) for i in range(prompts) for k in range(per_prompt)]
    labels = [float(k) for _, k in rows]
    responses = ["yes " * (1 + 4 * k) + f"({i})" for i, (_, k) in enumerate(rows)]
    pairs = preference_pairs([p.id for p, _ in rows], labels)
    return RewardPairs([p for p, _ in rows], responses, labels, pairs)


def test_the_trainer_tunes_the_top_layers_and_norm_only_and_the_loss_falls(tiny_model_dir):
    from safetensors.torch import load_file

    data = long_is_better()
    cfg = RewardTrainConfig(layers=1, epochs=20, tune_batch_size=9)
    tuner = RewardTuner(str(tiny_model_dir), data, cfg, device="cpu")
    start = pair_accuracy(dict(enumerate(head_values(tuner.head_on(data.pairs), tuner.features).tolist())), data.pairs)
    trainer, losses, accuracy = tuner.tune(data.pairs, lr=3e-3, weight_decay=0.0, epochs=2, watch=data.pairs)
    assert len(losses) == len(accuracy) == 2 and losses[-1] < losses[0]
    assert accuracy[-1] >= start and accuracy[-1] > 0.9

    base = load_file(tiny_model_dir / "model.safetensors")
    tuned = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert set(tuned) == {k for k in base if k != "lm_head.weight"} | {"score.weight"}
    moved = {k for k in base if k in tuned and not torch.equal(base[k], tuned[k])}
    assert moved == {k for k in base if k.startswith(("model.layers.1.", "model.norm."))}  # the rest frozen


def test_pairs_round_trip_and_layer_count_checked(tmp_path, tiny_model_dir):
    data = long_is_better(2)
    (tmp_path / "pairs.json").write_text(json.dumps(data.to_dict()))
    assert RewardPairs.load(tmp_path / "pairs.json") == data
    check_layers(str(tiny_model_dir), 2)
    with pytest.raises(SpiError, match=r"reward_model.layers=3, but the policy .* has 2 layers"):
        check_layers(str(tiny_model_dir), 3)


def test_no_pairs_is_one_clear_error(tiny_model_dir):
    data = RewardPairs([Prompt("a", "Hi?")], ["Hello."], [1.0], [])
    with pytest.raises(SpiError, match="no preference pairs"):
        tune_reward_model(str(tiny_model_dir), data, RewardTrainConfig(layers=1), Path("unused"))


def test_measure_reports_the_held_out_figures_without_the_last_tune(tiny_model_dir, monkeypatch, tmp_path):
    from spi_align.data.prompts import prompt_split

    data = long_is_better(10)
    cfg = RewardTrainConfig(layers=1, tune_lr=[1e-4, 1e-3], tune_epochs=2, tune_batch_size=9)
    tuner = RewardTuner(str(tiny_model_dir), data, cfg, device="cpu")
    tuned_on: list[int] = []
    tune = tuner.tune
    monkeypatch.setattr(tuner, "tune", lambda pairs, *a, **k: (tuned_on.append(len(pairs)), tune(pairs, *a, **k))[1])
    metrics = tuner.measure()

    fit, choice, held = prompt_split([p.id for p in data.prompts], 0)
    on = {name: sum(data.prompts[a].id in ids for a, _ in data.pairs) for name, ids in [("fit", fit), ("held", held)]}
    assert tuned_on == [on["fit"], on["fit"], len(data.pairs) - on["held"]]  # two candidates, then the probe: no final
    assert metrics["heldout_pairs"] == on["held"] > 0 and metrics["lr"] in cfg.tune_lr and metrics["epochs"] in (1, 2)
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0 and -1.0 <= metrics["heldout_spearman_with_labeller"] <= 1.0
    assert 0.0 <= metrics["head_heldout_accuracy"] <= 1.0 and metrics["tuned_parameters"] > 0
    assert "train_accuracy" not in metrics

    # the probe the held-out figures were read on is kept, and saved it is a classifier that reads the same
    from transformers import AutoModelForSequenceClassification

    assert tuner.probe is not None
    tuner.save(tuner.probe, tmp_path / "probe")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "probe").eval()
    held_samples = [i for i, p in enumerate(data.prompts) if p.id in held]
    with torch.no_grad():
        rewards = {i: float(model(input_ids=torch.tensor([tuner.ids[i]])).logits[0, 0]) for i in held_samples}
    held_pairs = [pr for pr in data.pairs if data.prompts[pr[0]].id in held]
    assert pair_accuracy(rewards, held_pairs) == pytest.approx(metrics["heldout_accuracy"])
    assert not (tmp_path / "probe" / "training_args.bin").exists()
