"""Where models come from: an embedded model (the default, or the optional Gemma), a local directory, or a hub id; their
configs; and which device."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_source(spec: str) -> str:
    """'default' → the cached embedded policy; 'gemma3-270m' → the cached optional one (fetched on first use); an
    existing path → itself; 'org/name' → the hub id.

    A spec that looks like a path but does not exist is an error here, not a hub lookup.
    """
    from spi_align.data.assets import embedded_model_dir

    embedded = embedded_model_dir(spec)
    if embedded is not None:
        return str(embedded)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SpiError(f"model path {spec} is a file; give the model's directory")
        return str(path)
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise SpiError(f"model path does not exist: {spec}")
    return spec


def looks_like_hub_id(spec: str) -> bool:
    """True for 'org/name' (what a reward model on the hub is called); a bare word is not taken for one."""
    return "/" in spec and not spec.startswith((".", "/", "~")) and bool(_HUB_ID.match(spec))


def load_model_config(spec: str, what: str = "model") -> tuple[str, Any]:
    """(source, transformers config) of a model spec (`resolve_model_source`), read without loading weights.

    One-line SpiError naming `what` when it cannot be read: a folder without a config.json, an unknown model type, a
    hub id that does not exist or, with no network, is not in the local cache.
    """
    from transformers import AutoConfig

    source = resolve_model_source(spec)
    try:
        return source, AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SpiError(f"cannot load {what} '{spec}': {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors often run to a paragraph)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def to_device(model: PreTrainedModel, device: str | torch.device) -> PreTrainedModel:
    """`model.to(device)` (in place), typed: transformers types `PreTrainedModel.to`'s wrapper as taking a model."""
    return torch.nn.Module.to(model, device)


def backbone_of(model: PreTrainedModel) -> PreTrainedModel:
    """The transformer under a model's head (`base_model`, which transformers types as any `nn.Module`)."""
    base = model.base_model
    if not isinstance(base, PreTrainedModel):
        raise SpiError(f"{type(model).__name__} has no transformers backbone (its base model is {type(base).__name__})")
    return base


def layer_stack(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The backbone's stack of transformer blocks (its longest `ModuleList`)."""
    lists = [m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise SpiError(f"{type(backbone).__name__} has no list of layers to fine-tune partially")
    return max(lists, key=len)


def top_layers(backbone: torch.nn.Module, layers: int) -> list[torch.nn.Module]:
    """The parts of a backbone that tuning its top `layers` layers trains: all of it (-1), none (0), or the last
    `layers` blocks of its stack and what follows the stack (the final norm)."""
    if layers == -1:
        return [backbone]
    if layers == 0:
        return []
    stack = layer_stack(backbone)
    chosen: list[torch.nn.Module] = list(stack[-layers:])
    after = False
    for child in backbone.children():
        if child is stack:
            after = True
        elif after and any(True for _ in child.parameters()):
            chosen.append(child)
    return chosen


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise SpiError(f"unknown device '{spec}'") from None
