"""Reward models as the field ships them: a transformers `...ForSequenceClassification` with `num_labels == 1`.

A hub id or a local folder (one written by TRL's `RewardTrainer`, or any `save_pretrained`) is a `Scorer`:

- What it reads. Each (prompt, response) is rendered with the reward model's own tokenizer: its chat template over
  the conversation (`Prompt.history`, the user's `text`, the response as the assistant's turn), exactly as
  `tokenizer.apply_chat_template(messages)` writes it (what TRL trains on); a tokenizer with no chat template gets
  the turns' contents joined by blank lines ("prompt\\n\\nresponse") with its own special tokens.
- Where it reads. The score is the model's own output, `logits[:, 0]`, read where the model reads it: the last
  token that is not `config.pad_token_id`. Batches are sorted by length and padded on the right with that very id,
  so every score equals calling the model on its text alone (`model(**tokenizer(text)).logits[:, 0]`), whatever
  the batch and whichever padding side the tokenizer was saved with.
- The pad token. The config's `pad_token_id` is what the model looks for, so it is the one padded with; a tokenizer
  without a pad token (or with another) takes the config's, and says so in the log. A config without one takes the
  tokenizer's (as TRL does). A model with neither is refused: its batches could not be read.
- Partial responses (the search's reward guide, `spi.reward_guide`) are rendered as if the response ended there.
- The policy's tokens. When the reward model's tokenizer is the policy's (compared for real,
  `values.tokenizers.same_tokenizer`) and a probe shows the rendered conversation is the policy's prompt ids, the
  response's ids and a fixed tail (the template's end of turn), `score_rows` scores finished rows from the policy's
  own token ids: no decoding and re-encoding (`attach`).
- Bad input is refused with one line before any weights load: a folder holding another kind of model (a causal
  LM), `num_labels != 1`, a hub id that cannot be reached, no pad token at all.
- Inside a search its forward tokens (padding-free) are billed to the search's cost as "reward" (`billed()`).

`score_head` gives the classifier's score head, so that a value model can start from the reward model whole
(`ValueModel.from_source`: the paper's recipe).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy
from spi_align.core.records import Cost, Prompt, billed
from spi_align.hf.batches import pad_batch
from spi_align.hf.chat import render
from spi_align.hf.models import first_line, load_model_config, to_device

if TYPE_CHECKING:
    from spi_align.core.rows import Rows

log = logging.getLogger(__name__)

CLASSIFIER = "ForSequenceClassification"
"""How the architectures of a sequence-classification model end (`LlamaForSequenceClassification`, ...)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBES = (
    (Prompt("probe", "Name a colour."), "Blue, like the sky."),
    (Prompt("probe", "And one more?", history=(("user", "Hi."), ("assistant", "Hello!"))), " Green,\nsurely."),
)
"""Conversations whose rendering decides whether the reward model reads the policy's token ids as they are."""


def is_classifier(config: Any) -> bool:
    """Whether a transformers config names a sequence-classification architecture."""
    return any(str(name).endswith(CLASSIFIER) for name in getattr(config, "architectures", None) or [])


def holds_classifier(folder: Path) -> bool:
    """Whether a local folder's config.json names a sequence-classification architecture (read as JSON, quickly)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(name).endswith(CLASSIFIER) for name in config.get("architectures") or [])


def classifier_config(spec: str) -> tuple[str, Any]:
    """(source, config) of a reward model given as a hub id or folder; one-line SpiError unless it is a sequence
    classifier with one label. Reads only the config (no weights)."""
    source, config = load_model_config(spec, what="reward model")
    if not is_classifier(config):
        held = ", ".join(config.architectures or []) or f"a '{config.model_type}' model with no architecture named"
        raise SpiError(
            f"reward model '{spec}' holds {held}, not a sequence classifier: a reward model is a transformers "
            f"...{CLASSIFIER} with num_labels=1"
        )
    if config.num_labels != 1:
        raise SpiError(
            f"reward model '{spec}' has num_labels={config.num_labels}: a reward model gives one score (num_labels=1)"
        )
    return source, config


def agree_on_pad(spec: str, tokenizer: Any, config: Any) -> int:
    """The id to pad with, set on both the tokenizer and the config (see the module docstring); SpiError when
    neither names one."""
    text_config = config.get_text_config()
    wanted = text_config.pad_token_id
    if wanted is None:
        if tokenizer.pad_token_id is None:
            raise SpiError(
                f"reward model '{spec}' names no pad token (neither its tokenizer nor config.pad_token_id), so its "
                "batched scores cannot be read at each text's last token: set both and save it again"
            )
        text_config.pad_token_id = tokenizer.pad_token_id
        return int(tokenizer.pad_token_id)
    if tokenizer.pad_token_id != wanted:
        token = tokenizer.convert_ids_to_tokens(int(wanted))
        if token is None:
            raise SpiError(f"reward model '{spec}': config.pad_token_id={wanted} is not in its tokenizer's vocabulary")
        log.info(
            "reward model '%s': padding with %r (config.pad_token_id %d, where the model looks), its tokenizer %s",
            spec,
            token,
            wanted,
            "has no pad token" if tokenizer.pad_token_id is None else f"pads with {tokenizer.pad_token!r}",
        )
        tokenizer.pad_token = token
    return int(wanted)


def load_classifier(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
    """(model in eval mode, tokenizer) of a sequence-classification reward model, checked (one-line SpiError)
    before its weights load."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source, config = classifier_config(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SpiError(f"cannot load the tokenizer of reward model '{spec}': {first_line(exc)}") from None
    agree_on_pad(spec, tokenizer, config)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise SpiError(f"cannot load reward model '{spec}': {first_line(exc)}") from None
    return to_device(model, device).eval().requires_grad_(False), tokenizer


def score_head(model: nn.Module) -> nn.Linear:
    """The classifier's head, when it is one `Linear(hidden, 1)` applied to every token's state (decoder reward
    models: `score`); SpiError for a head on a pooled state (encoders), which reads no token position."""
    base = model.base_model
    heads = [m for m in model.children() if m is not base and any(True for _ in m.parameters())]
    head = heads[0] if len(heads) == 1 else None
    if not isinstance(head, nn.Linear) or head.out_features != 1 or getattr(base, "pooler", None) is not None:
        raise SpiError(
            f"{type(model).__name__} scores a pooled state, not each token's: a value model cannot start from it"
        )
    return head


class ClassifierReward:
    """A sequence-classification reward model as a `Scorer` (text), and a `RowReward` when attached to a policy
    whose tokenizer it shares (see the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        name: str = "",
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        """`max_length`: longer inputs keep their last tokens (where the score is read); None = the model's
        context (`max_position_embeddings`), when it says."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or f"reward_model({type(model).__name__})"
        self.source: str | Path = ""
        """Where it was loaded from (hub id or folder; '' when built from a model in memory)."""
        self.batch_size = batch_size
        self.pad_id = agree_on_pad(self.name, tokenizer, model.config)
        self.templated = getattr(tokenizer, "chat_template", None) is not None
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.max_length = max_length or context
        self.policy: Policy | None = None
        self.tail: list[int] | None = None
        """Token ids the rendering puts after a response (None: rows are scored as text)."""

    @classmethod
    def load(cls, spec: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 16) -> ClassifierReward:
        """The reward model at `spec` (hub id or folder) on `device` in `dtype` ('float32', 'bfloat16', 'float16')."""
        if dtype not in DTYPES:
            raise SpiError(f"unknown dtype '{dtype}' for reward model '{spec}': use {', '.join(DTYPES)}")
        model, tokenizer = load_classifier(spec, device, DTYPES[dtype])
        name = f"reward_model({Path(spec.rstrip('/')).name})"
        reward = cls(model, tokenizer, name=name, batch_size=batch_size)
        reward.source = spec
        return reward

    # --- text --------------------------------------------------------------------------------------------------
    def render(self, prompt: Prompt, response: str) -> str:
        """The conversation as the reward model reads it (see the module docstring)."""
        return render(self.tokenizer, prompt, response, templated=self.templated)

    def encode(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each rendered conversation (a chat template writes its own special tokens)."""
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=not self.templated)["input_ids"]]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.score_ids(self.encode(prompts, responses)) if responses else []

    @torch.no_grad()
    def score_ids(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """The model's score of each token-id sequence: batched by length, padded on the right with `pad_id`."""
        if self.max_length is not None and any(len(s) > self.max_length for s in seqs):
            log.warning("%s: inputs over %d tokens keep their last %d", self.name, self.max_length, self.max_length)
            seqs = [s[-self.max_length :] for s in seqs]
        device = next(self.model.parameters()).device
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        scores = [0.0] * len(seqs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids, mask = pad_batch([seqs[i] for i in rows], self.pad_id, side="right", device=device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, 0]
            cost = billed()
            if cost is not None:
                cost.count_forward("reward", int(mask.sum()))
            for i, value in zip(rows, logits.float().cpu().tolist(), strict=True):
                scores[i] = value
        return scores

    # --- the policy's tokens -------------------------------------------------------------------------------------
    def attach(self, policy: Policy) -> bool:
        """Score `policy`'s finished rows from their token ids (`score_rows`) when the reward model reads them as
        they are; True when it does, else rows are scored as text."""
        from spi_align.hf.tokenizers import same_tokenizer

        self.policy, self.tail = policy, None
        if not same_tokenizer(_padding_as(self.tokenizer, policy.tokenizer), policy.tokenizer):
            return False
        tails = set()
        for prompt, response in PROBES:
            rendered = self.encode([prompt], [response])[0]
            head = [*policy.prompt_ids([prompt])[0], *policy.tokenizer(response, add_special_tokens=False)["input_ids"]]
            if rendered[: len(head)] != head:
                return False
            tails.add(tuple(rendered[len(head) :]))
        if len(tails) == 1:
            self.tail = list(tails.pop())
        log.info("%s reads the policy's token ids: %s", self.name, "yes" if self.tail is not None else "no")
        return self.tail is not None

    def score_rows(self, rows: Rows, index: torch.Tensor, cost: Cost) -> list[float] | None:
        """Rewards of rows `index` from the policy's token ids (special tokens dropped, as in the text), or None
        when this reward model does not read them (score by text then)."""
        if self.tail is None or self.policy is None or not rows.prompts:
            return None
        prompt_ids = self.policy.prompt_ids(rows.prompts)
        special = set(self.policy.tokenizer.all_special_ids)  # what the policy's decoding drops
        responses = rows.token_lists(index)
        seqs = [
            [*prompt_ids[p], *(t for t in tokens if t not in special), *self.tail]
            for p, tokens in zip(rows.prompt_index[index].tolist(), responses, strict=True)
        ]
        return self.score_ids(seqs)


def _padding_as(tokenizer: Any, other: Any) -> Any:
    """`tokenizer`, or a copy padding with `other`'s pad token: which token pads batches changes no token's id (a
    reward model saved by `RewardModel.save_classifier` pads with the token after the turn's end, the policy with its
    own)."""
    if tokenizer.pad_token == other.pad_token:
        return tokenizer
    import copy

    padded = copy.deepcopy(tokenizer)
    padded.pad_token = other.pad_token
    return padded
