"""Reward model: any transformers backbone (no LM head) plus a scalar fp32 head on the last real token.

`model(input_ids, attention_mask) -> rewards (B,)` is all a Bradley–Terry trainer needs. Padding may sit on
either side: the reward is read at the last position the attention mask keeps, and position ids follow the
mask. Always pass the tokenizer's attention mask: for SmolLM2 the pad token is also `<|im_end|>`, so a mask
rebuilt from pad ids would hide real end-of-turn tokens.

On disk (`save`/`load`): the backbone's `model.safetensors` and config (or, saved `with_backbone=False`, just
where to load it from), its tokenizer, `head.safetensors`, and `spi_reward.json` saying how to rebuild it.
"""

from __future__ import annotations

import json
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

SPEC_FILE = "spi_reward.json"
HEAD_FILE = "head.safetensors"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def head_values(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """A scalar head (`Linear(H, 1)`) on states (..., H) → values (...) in fp32, the states moved to the head's
    device and dtype: how a reward head reads the end-token states the policy peeks at (and a value model's head,
    its own states)."""
    return head(hidden.to(head.weight)).squeeze(-1).float()


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
        """A fresh head on a pretrained backbone: 'default' (SmolLM2), a local directory or a hub id."""
        from transformers import AutoModel, AutoTokenizer

        from spi_align.data.assets import default_policy_dir

        path = default_policy_dir() if str(source) == "default" else source
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
        """The text scored (`hf.chat.render`, earlier turns included): the tokenizer's chat template when it has
        one, read at the turn's end token (trailing newlines dropped), which is where a policy's own row ends when
        it stops itself; without a template the turns and the response one per line."""
        if self._templated:
            return render(self.tokenizer, prompt, response, templated=True).rstrip("\n")
        return render(self.tokenizer, prompt, response, templated=False, separator="\n")

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

        from spi_align.data.assets import default_policy_dir

        path = Path(directory)
        try:
            spec = json.loads((path / SPEC_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpiError(f"{path} is not a reward model directory ({SPEC_FILE}: {exc})") from None
        if spec.get("format") != FORMAT_VERSION:
            raise SpiError(f"{path / SPEC_FILE}: unsupported format {spec.get('format')!r}")
        if backbone is None:
            where = spec["backbone"]
            source = path if where == "." else default_policy_dir() if where == "default" else where
            backbone = to_device(AutoModel.from_pretrained(source, dtype=_DTYPES[dtype or spec["dtype"]]), device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = cls(backbone, tokenizer, source=spec.get("backbone_source", ""), max_length=spec["max_length"])
        model.head.load_state_dict(load_file(path / spec["head"]["file"], device=str(model.device)))
        return model.eval()


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
