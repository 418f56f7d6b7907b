"""A separate value model: any transformers backbone (no LM head) + a scalar fp32 head, V at every token position.

It may start from the policy's own weights or from any other model (smaller, or another family: weak-to-strong,
section 4.2). Training (eq. 12, `values/model_train.py`) updates the head and the last `train_layers` layers of the
backbone (-1: all of it, 0: the head only).

On disk (`save`/`load`): `value_model.json` says how to rebuild it, `value_model.safetensors` holds the head and the
trained backbone tensors, and the tokenizer files sit beside them. When only some layers were trained, the rest is
rebuilt from `source` (the untrained tensors equal the source's); when all were, the backbone's config is saved
and every tensor is in the safetensors file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.hf.batches import BackboneRunner, pad_token_id
from spi_align.hf.chat import render
from spi_align.hf.models import top_layers
from spi_align.scoring.reward_model import head_values

SPEC_FILE = "value_model.json"
WEIGHTS_FILE = "value_model.safetensors"
FORMAT_VERSION = 1


class ValueModel(nn.Module):
    """Backbone + `Linear(hidden, 1)` in fp32: `forward(ids, mask)` gives V(x, y_{1:t}) at every position (B, T)."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: Any,
        source: str = "",
        train_layers: int = -1,
        chat_template: bool = True,
    ) -> None:
        super().__init__()
        if train_layers < -1:
            raise SpiError(f"train_layers must be -1 (all), 0 (head only) or a number of layers, not {train_layers}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.source = source
        self.train_layers = train_layers
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        hidden = backbone.config.get_text_config().hidden_size
        param = next(backbone.parameters())
        self.head = nn.Linear(hidden, 1, dtype=torch.float32, device=param.device)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.runner = BackboneRunner(backbone, component="value")  # forward tokens billed as "value"
        self.pad_id = pad_token_id(tokenizer)

    # --- building ---------------------------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls, source: str, train_layers: int = -1, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> ValueModel:
        """A fresh head on a pretrained backbone: 'default' (SmolLM2), a local model directory, or a hub id.

        A sequence-classification reward model (num_labels 1) starts it whole, its score head included: V begins as
        the reward model read at every position (the paper's recipe, `scoring/classifier.py`).
        """
        from transformers import AutoModel, AutoTokenizer

        from spi_align.hf.models import backbone_of, load_model_config, resolve_model_source
        from spi_align.scoring.classifier import is_classifier, load_classifier, score_head

        if source != "default" and is_classifier(load_model_config(source, what="value backbone")[1]):
            classifier, tokenizer = load_classifier(source, device, dtype)
            head = score_head(classifier)
            model = cls(backbone_of(classifier).eval(), tokenizer, source=source, train_layers=train_layers)
            with torch.no_grad():
                model.head.weight.copy_(head.weight)
                model.head.bias.copy_(head.bias if head.bias is not None else torch.zeros_like(model.head.bias))
            return model
        path = resolve_model_source(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            backbone = AutoModel.from_pretrained(path, dtype=dtype).to(device)
        except (OSError, ValueError) as exc:
            raise SpiError(f"could not load value backbone '{source}': {str(exc).splitlines()[0]}") from None
        return cls(backbone.eval(), tokenizer, source=source, train_layers=train_layers)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def trained_modules(self) -> list[nn.Module]:
        """Backbone parts that training updates: all (-1), none (0), or the last n layers and what follows them
        (the final norm): `hf.models.top_layers`."""
        return top_layers(self.backbone, self.train_layers)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Freeze the backbone except `trained_modules()`; returns the head's and those modules' parameters."""
        self.backbone.requires_grad_(False)
        for module in self.trained_modules():
            module.requires_grad_(True)
        self.head.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def trained_names(self) -> list[str]:
        """Names (in the backbone's state dict) of the tensors training may change."""
        ids = {id(p) for m in self.trained_modules() for p in m.parameters()}
        return [n for n, p in self.backbone.named_parameters() if id(p) in ids]

    # --- text ---------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The prompt as this model reads it (`hf.chat.render`, earlier turns included): its own chat template (the
        generation prompt added) when it has one, else the text with the tokenizer's special tokens."""
        text = render(self.tokenizer, prompt, templated=self.chat_template)
        return list(self.tokenizer(text, add_special_tokens=not self.chat_template)["input_ids"])

    def response_ids(self, text: str) -> list[int]:
        """A (partial) response's tokens, appended after `prompt_ids`."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def responses_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """`response_ids` of each text, in one tokenizer call."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    # --- forward --------------------------------------------------------------------------------------------------
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, T, H) of the new tokens `input_ids` (see `BackboneRunner.hidden`)."""
        return self.runner.hidden(input_ids, attention_mask, cache)

    def new_cache(self) -> Any:
        """An empty KV cache for the backbone (what `SideCache` fills)."""
        return self.runner.new_cache()

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on hidden states (..., H) → values (...) in fp32."""
        return head_values(self.head, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """V at every position (B, T), fp32; padding may sit on either side."""
        return self.value(self.hidden(input_ids, attention_mask))

    # --- disk -----------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the spec, the head + trained tensors, the tokenizer (and the config when everything was trained)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        full = self.train_layers == -1
        if not full and not self.source:
            raise SpiError("a partially trained value model needs a backbone source to be rebuilt from")
        state = self.backbone.state_dict()
        names = list(state) if full else self.trained_names()
        tensors = {f"backbone.{n}": state[n] for n in names}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, out / WEIGHTS_FILE)
        if full:
            self.backbone.config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        source = str(Path(self.source).resolve()) if self.source and Path(self.source).is_dir() else self.source
        spec = {
            "format": FORMAT_VERSION,
            "type": "value_model",
            "backbone": "." if full else source,
            "backbone_source": source,
            "backbone_class": type(self.backbone).__name__,
            "dtype": str(next(self.backbone.parameters()).dtype).removeprefix("torch."),
            "train_layers": self.train_layers,
            "trained": names,
            "chat_template": self.chat_template,
            "hidden_size": self.head.in_features,
        }
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", base: nn.Module | None = None) -> ValueModel:
        """Rebuild a saved value model (eval mode).

        `base`: an already-loaded copy of the source backbone to write the trained tensors into (e.g. a copy of
        the policy's; the very policy backbone when only the head was trained). Without it the source is loaded.
        """
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from spi_align.hf.models import resolve_model_source

        path = Path(directory)
        try:
            spec = json.loads((path / SPEC_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpiError(f"{path} is not a value model directory ({SPEC_FILE}: {exc})") from None
        if spec.get("format") != FORMAT_VERSION or spec.get("type") != "value_model":
            raise SpiError(f"{path / SPEC_FILE}: unsupported value model format")
        dtype = getattr(torch, spec["dtype"])
        if spec["backbone"] == ".":
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
        elif base is not None:
            backbone = base
        else:
            backbone = AutoModel.from_pretrained(resolve_model_source(spec["backbone"]), dtype=dtype)
        backbone = backbone.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = cls(backbone, tokenizer, spec["backbone_source"], spec["train_layers"], spec["chat_template"])
        tensors = load_file(path / WEIGHTS_FILE, device=str(model.device))
        trained = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
        _copy_into(backbone, trained, strict=spec["backbone"] == ".")
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")})
        return model.eval().requires_grad_(False)


def _copy_into(module: nn.Module, tensors: dict[str, torch.Tensor], strict: bool) -> None:
    """Load `tensors` into `module`; every saved tensor must find its place (and, if strict, every place a tensor)."""
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if unexpected or (strict and missing):
        raise SpiError(
            f"saved value model does not fit its backbone: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )
