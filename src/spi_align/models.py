"""Where models come from: the embedded default, a local directory, or a hub id; and which device."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from spi_align.errors import SpiError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_source(spec: str) -> str:
    """'default' → the cached embedded policy; an existing path → itself; 'org/name' → the hub id.

    A spec that looks like a path but does not exist is an error here, not a hub lookup.
    """
    if spec == "default":
        from spi_align.assets import default_policy_dir

        return str(default_policy_dir())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SpiError(f"model path {spec} is a file; give the model's directory")
        return str(path)
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise SpiError(f"model path does not exist: {spec}")
    return spec


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise SpiError(f"unknown device '{spec}'") from None
