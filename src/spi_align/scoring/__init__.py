"""Scorers: batched (prompts, responses) -> floats, higher is better. `make_scorer` turns a spec into one.

Heavy libraries load only when a scorer that needs them is made. A spec that names a model (a folder, a hub id) is
checked and loaded here, so a wrong one fails before anything is sampled.
"""

from __future__ import annotations

from pathlib import Path

from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy, Scorer
from spi_align.hf.models import looks_like_hub_id

CHOICES = (
    "'similarity', 'sentiment', 'polarity', 'default' (the reward head shipped for the default policy), "
    "a reward model (a sequence classifier's folder or hub id 'org/name', "
    "or a directory with spi_reward.json) or 'module:function'"
)


def make_scorer(spec: str, device: str = "cpu", dtype: str = "float32", policy: Policy | None = None) -> Scorer:
    """'similarity', 'sentiment' (VADER), 'polarity' (TextBlob), 'default' (the reward head shipped for the default
    policy, on its own copy of that policy's backbone), a reward model, or 'module:function'.

    A reward model is a transformers sequence classifier with one label (a folder or a hub id 'org/name', run on
    `device` in `dtype`; `scoring/classifier.py`) or a directory saved by `RewardModel.save` (spi_reward.json).
    `policy`: the policy whose candidates it will score; a classifier that shares its tokenizer then reads the
    policy's token ids instead of re-encoding text, and a folder tuned on its top layers runs on its lower layers
    (`scoring/top_layers.py`, in the policy's dtype).
    """
    if spec == "similarity":
        from spi_align.scoring.similarity import ReferenceSimilarity

        return ReferenceSimilarity(device=device)
    if spec == "sentiment":
        from spi_align.scoring.sentiment import Sentiment

        return Sentiment()
    if spec == "polarity":
        from spi_align.scoring.sentiment import Polarity

        return Polarity()
    if spec == "default":
        from spi_align.data.assets import default_reward_dir
        from spi_align.scoring.reward_model import RewardModelScorer

        return RewardModelScorer.load(default_reward_dir(), device=device)
    path = Path(spec).expanduser()
    if path.is_dir():
        from spi_align.scoring.classifier import holds_classifier
        from spi_align.scoring.reward_model import SPEC_FILE, RewardModelScorer

        if (path / SPEC_FILE).is_file() and not holds_classifier(path):  # a trained head writes both: the classifier
            return RewardModelScorer.load(path, device=device)
        if not (path / "config.json").is_file():
            raise SpiError(
                f"scorer '{spec}': the folder has no config.json (a transformers reward model) and no {SPEC_FILE} "
                "(one saved by spi), so it is not a reward model"
            )
        return _classifier(spec, device, dtype, policy)
    if ":" in spec:
        from spi_align.scoring.callable import CallableScorer

        return CallableScorer(spec)
    if looks_like_hub_id(spec):
        return _classifier(spec, device, dtype, policy)
    raise SpiError(f"unknown scorer '{spec}': use {CHOICES}")


def _classifier(spec: str, device: str, dtype: str, policy: Policy | None) -> Scorer:
    from spi_align.scoring.classifier import ClassifierReward

    folder = Path(spec).expanduser()
    if policy is not None and folder.is_dir():  # tuned on the policy's top layers: run on its lower ones
        from spi_align.scoring.top_layers import top_layers_reward

        shared = top_layers_reward(folder, policy)
        if shared is not None:
            return shared
    reward = ClassifierReward.load(spec, device=device, dtype=dtype)
    if policy is not None:
        reward.attach(policy)
    return reward


__all__ = ["CHOICES", "make_scorer"]
