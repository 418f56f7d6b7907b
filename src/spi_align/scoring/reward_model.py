"""Reward model: any transformers backbone (no LM head) plus a scalar fp32 head on the last real token.

`model(input_ids, attention_mask) -> rewards (B,)` is all a Bradley–Terry trainer needs. Padding may sit on
either side: the reward is read at the last position the attention mask keeps, and position ids follow the
mask. Always pass the tokenizer's attention mask: for SmolLM2 the pad token is also `<|im_end|>`, so a mask
rebuilt from pad ids would hide real end-of-turn tokens.

On disk (`save`/`load`): the backbone's `model.safetensors` and config (or, saved `with_backbone=False`, just
where to load it from), its tokenizer, `head.safetensors`, and `spi_reward.json` saying how to rebuild it.

As the field ships reward models (`save_classifier`): a transformers `...ForSequenceClassification` with one label,
the backbone under it and the head as its `score` layer, that plain `AutoModelForSequenceClassification` loads and
`reward=<folder>` scores (`scoring/classifier.py`) with the rewards of this model. Such a classifier reads the last
token that is not its pad token; this model reads the turn's end token, which a chat template follows with a little
text of its own (SmolLM2: `<|im_end|>` then a newline). So the saved tokenizer and config pad with that trailing
token (`reading_pad_id`): the classifier then reads the end token on the template's own rendering, on this model's
text (cut after the end token), and in right-padded batches alike. Bradley–Terry fixes a reward only up to a
constant and a transformers score layer has no bias, so the trained head has none either (`train_reward.py`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.hf.batches import BackboneRunner
from spi_align.hf.chat import render
from spi_align.hf.models import to_device

log = logging.getLogger(__name__)

SPEC_FILE = "spi_reward.json"
HEAD_FILE = "head.safetensors"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def head_values(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """A scalar head (`Linear(H, 1)`) on states (..., H) → values (...) in fp32, the states moved to the head's
    device and dtype: how a reward head reads the end-token states the policy peeks at (and a value model's head,
    its own states)."""
    return head(hidden.to(head.weight)).squeeze(-1).float()


def end_token_text(tokenizer: Any, prompt: Prompt, response: str, templated: bool) -> str:
    """The text a reward model on the policy's states scores (`hf.chat.render`, earlier turns included): through the
    chat template, cut after the turn's end token (trailing newlines dropped), which is where a policy's own row ends
    when it stops itself; without a template the turns and the response joined as a transformers reward model
    without a template reads them (`scoring/classifier.py`)."""
    text = render(tokenizer, prompt, response, templated=templated)
    return text.rstrip("\n") if templated else text


def reading_pad_id(tokenizer: Any) -> int:
    """The pad id under which a transformers sequence classifier reads where this module's reward model reads.

    A classifier reads the last token that is not its pad token. Its rendering of a conversation (the chat template's
    whole turn, `scoring/classifier.py`) is the end-token text (`end_token_text`) plus what the template writes after
    the end token; when that is one token, repeated or not (SmolLM2's newline), it is the pad; when there is none, any
    id but the text's last one does (the tokenizer's pad, else its end of sequence, unknown or start token). SpiError
    when the template writes several different tokens there (no pad can skip them) or renders otherwise."""
    from spi_align.scoring.classifier import PROBES

    templated = bool(getattr(tokenizer, "chat_template", None))
    tails: set[int] = set()
    lasts: set[int] = set()
    for prompt, response in PROBES:
        cut = tokenizer(end_token_text(tokenizer, prompt, response, templated), add_special_tokens=not templated)
        whole = tokenizer(render(tokenizer, prompt, response, templated=templated), add_special_tokens=not templated)
        cut_ids, whole_ids = list(cut["input_ids"]), list(whole["input_ids"])
        if whole_ids[: len(cut_ids)] != cut_ids or not cut_ids:
            raise SpiError("the chat template renders a finished turn otherwise than cut at its end token")
        tails.update(whole_ids[len(cut_ids) :])
        lasts.add(cut_ids[-1])
    if len(tails) > 1:
        shown = tokenizer.convert_ids_to_tokens(sorted(tails))
        raise SpiError(
            f"the chat template writes {shown} after a turn's end token: a transformers classifier, which reads the "
            "last token that is not its pad token, cannot read the end token as the reward head does"
        )
    if tails:
        return tails.pop()
    candidates = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id)
    return next(int(c) for c in (*candidates, *range(len(tokenizer))) if c is not None and c not in lasts)


class RewardModel(nn.Module):
    """Backbone (e.g. `LlamaModel`) + `Linear(hidden, 1)` in fp32; reward = head(last real token's state)."""

    def __init__(self, backbone: PreTrainedModel, tokenizer: Any, source: str = "", max_length: int = 1024) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = max_length
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1, dtype=torch.float32, device=_device_of(backbone))
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._templated = bool(getattr(tokenizer, "chat_template", None))
        self.runner = BackboneRunner(backbone, component="reward")  # forward tokens billed as "reward"

    @classmethod
    def from_pretrained(
        cls, source: str | Path, dtype: str = "float32", device: str = "cpu", max_length: int = 1024
    ) -> RewardModel:
        """A fresh head on a pretrained backbone: an embedded model ('default', 'gemma3-270m'), a local directory or a
        hub id."""
        from transformers import AutoModel, AutoTokenizer

        from spi_align.data.assets import embedded_model_dir

        path = embedded_model_dir(str(source)) or source
        backbone = AutoModel.from_pretrained(path, dtype=_DTYPES[dtype]).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(backbone, tokenizer, source=str(source), max_length=max_length)

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.head.weight.device

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden state at each row's last real token, (B, H), in the backbone's dtype."""
        hidden = self.runner.hidden(input_ids, attention_mask)  # (B, T, H); never every layer's states
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) in fp32 for a padded batch (left or right padding)."""
        picked = self.features(input_ids, attention_mask)
        return head_values(self.head, picked)

    def format(self, prompt: Prompt, response: str) -> str:
        """The text scored: `end_token_text` (through the chat template when the tokenizer has one, read at the
        turn's end token)."""
        return end_token_text(self.tokenizer, prompt, response, self._templated)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded `input_ids` and `attention_mask` on the model's device, cut to `max_length`."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=not self._templated,  # a chat template already writes its special tokens
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def save(self, directory: str | Path, with_backbone: bool = True) -> Path:
        """Write tokenizer, head, `spi_reward.json` and (unless `with_backbone=False`) the backbone.

        Without the backbone, `load` rebuilds it from `source` (e.g. a frozen policy backbone shared with the
        policy): only the small head is stored.
        """
        from safetensors.torch import save_file

        if not with_backbone and not self.source:
            raise SpiError("a reward model saved without its backbone needs a backbone source to reload from")
        source = str(Path(self.source).resolve()) if Path(self.source).is_dir() else self.source
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if with_backbone:
            self.backbone.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, out / HEAD_FILE)
        spec = {
            "format": FORMAT_VERSION,
            "backbone": "." if with_backbone else source,
            "backbone_source": source,
            "backbone_class": type(self.backbone).__name__,
            "dtype": str(next(self.backbone.parameters()).dtype).removeprefix("torch."),
            "head": {"file": HEAD_FILE, "in_features": self.head.in_features, "out_features": 1},
            "max_length": self.max_length,
        }
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        return out

    def save_classifier(self, directory: str | Path) -> Path:
        """Write this reward model as a transformers sequence classifier with one label (the module docstring): the
        backbone under a `...ForSequenceClassification` of its architecture (in its dtype), the head as its score
        layer, the config and a copy of the tokenizer padding with `reading_pad_id`, the chat template included.
        Files of `save(with_backbone=False)` may sit beside them (the tokenizer is then this one)."""
        from transformers import AutoModelForSequenceClassification

        from spi_align.scoring.classifier import score_head

        tokenizer = copy.deepcopy(self.tokenizer)
        pad = reading_pad_id(tokenizer)
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
        config = copy.deepcopy(self.backbone.config)
        config.num_labels = 1
        config.pad_token_id = pad
        with torch.device("meta"):  # an empty shell: the backbone is this one, not a copy
            classifier = AutoModelForSequenceClassification.from_config(config)
        prefix = classifier.base_model_prefix
        if type(getattr(classifier, prefix, None)) is not type(self.backbone):
            raise SpiError(f"{type(classifier).__name__} does not hold a {type(self.backbone).__name__} backbone")
        setattr(classifier, prefix, self.backbone)
        shell = score_head(classifier)
        name = next(n for n, m in classifier.named_children() if m is shell)
        param = next(self.backbone.parameters())
        score = nn.Linear(shell.in_features, 1, bias=shell.bias is not None, dtype=param.dtype, device=param.device)
        bias = float(self.head.bias.detach())
        with torch.no_grad():
            score.weight.copy_(self.head.weight)
            if score.bias is not None:
                score.bias.fill_(bias)
        if score.bias is None and bias != 0.0:
            log.warning("%s has no bias: its rewards are this head's minus %g (the same rankings)", name, bias)
        setattr(classifier, name, score)
        out = Path(directory)
        classifier.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str = "cpu",
        dtype: str | None = None,
        backbone: PreTrainedModel | None = None,
    ) -> RewardModel:
        """Rebuild a saved reward model (eval mode).

        `backbone`: use this already-loaded backbone (e.g. the policy's) instead of loading one; `dtype`
        overrides the saved backbone dtype.
        """
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from spi_align.data.assets import embedded_model_dir

        path = Path(directory)
        try:
            spec = json.loads((path / SPEC_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpiError(f"{path} is not a reward model directory ({SPEC_FILE}: {exc})") from None
        if spec.get("format") != FORMAT_VERSION:
            raise SpiError(f"{path / SPEC_FILE}: unsupported format {spec.get('format')!r}")
        if backbone is None:
            where = spec["backbone"]
            source = path if where == "." else embedded_model_dir(where) or where
            backbone = to_device(AutoModel.from_pretrained(source, dtype=_DTYPES[dtype or spec["dtype"]]), device)
        where = spec["backbone"]
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(
            path if has_tokenizer or where == "." else embedded_model_dir(where) or where
        )  # a head shipped without tokenizer files reads with its backbone's
        model = cls(backbone, tokenizer, source=spec.get("backbone_source", ""), max_length=spec["max_length"])
        model.head.load_state_dict(load_file(path / spec["head"]["file"], device=str(model.device)))
        return model.eval()


def save_trained_reward(reward: Any, directory: str | Path) -> Path:
    """Write a trained reward as a run keeps it (`reward: train`): a `RewardModel` (or a scorer holding one as
    `model`) as its head on the policy's backbone (`save(with_backbone=False)`, what the run reloads on the policy)
    beside the transformers classifier it is (`save_classifier`); a transformers classifier (a scorer holding one and
    its tokenizer: the top layers tuned) as it is."""
    model = reward if isinstance(reward, RewardModel) else getattr(reward, "model", None)
    out = Path(directory)
    if isinstance(model, RewardModel):
        model.save(out, with_backbone=False)
        model.save_classifier(out)
    elif isinstance(model, PreTrainedModel):
        model.save_pretrained(out)
        reward.tokenizer.save_pretrained(out)
    elif hasattr(reward, "save_pretrained"):  # a classifier run on the policy's layers writes its own folder
        reward.save_pretrained(out)
    else:
        raise SpiError(f"{type(reward).__name__} is no trained reward model to save")
    return out


class RewardModelScorer:
    """A `RewardModel` as a `Scorer`: batched, length-sorted to waste little padding, no gradients."""

    def __init__(self, model: RewardModel, batch_size: int = 16, name: str | None = None) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.name = name or f"reward_model({Path(model.source).name or 'unnamed'})"

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", batch_size: int = 16) -> RewardModelScorer:
        """The scorer of a reward model saved with `RewardModel.save`."""
        model = RewardModel.load(directory, device=device)
        return cls(model, batch_size=batch_size, name=f"reward_model({Path(directory).name})")

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.model.format(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rewards = [0.0] * len(texts)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                values = self.model(**self.model.tokenize([texts[i] for i in rows]))
                for i, value in zip(rows, values.float().cpu().tolist(), strict=True):
                    rewards[i] = value
        return rewards


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
