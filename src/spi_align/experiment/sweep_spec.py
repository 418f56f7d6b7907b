"""A sweep's spec (`SweepSpec`, read by `load_spec`) and its cells (`Cell`): what `sweep.py` runs and
`sweep_report.py` tabulates (the format is described in `sweep.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spi_align.config import Config, read_yaml
from spi_align.core.errors import SpiError


class SweepSpec(BaseModel):
    """A sweep: base config, a grid of settings, optional variants."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str | None = None
    """Sweep name, its folder under `dir` (default: the spec file's stem)."""
    dir: str = "runs/sweeps"
    """Folder holding sweeps."""
    cells: str | None = None
    """Folder of the cells' run directories (default: <dir>/<name>/cells); sweeps naming the same one share cells."""
    base: str | None = None
    """A YAML config the cells start from, relative to the spec file (None: the built-in defaults)."""
    config: dict[str, Any] = {}
    """Inline config over the base (nested, as in a config file)."""
    grid: dict[str, list[Any]] = {}
    """Dotted config key → values; the sweep runs every combination."""
    variants: list[dict[str, Any]] = Field(default_factory=list)
    """Settings that go together (dotted key → value), each combined with every grid cell."""
    baseline: str | None = None
    """Method the tables compare against (default: the cells' best-of-(W·K))."""


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: the settings that vary, and the resolved config with its hash."""

    settings: dict[str, Any]
    config: Config
    key: str

    @property
    def path(self) -> Path:
        return Path(self.config.run_dir) / self.key


def load_spec(path: str | Path) -> tuple[SweepSpec, Path]:
    """The spec, validated, and the sweep's folder (tables and plots)."""
    path = Path(path)
    try:
        spec = SweepSpec.model_validate(read_yaml(path))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SpiError(f"sweep spec {path}: {where}: {first['msg']}") from None
    if spec.base is not None:
        spec.base = str((path.parent / spec.base).resolve())
    for key, values in spec.grid.items():
        if not values:
            raise SpiError(f"sweep spec {path}: grid key '{key}' has no values")
    return spec, Path(spec.dir) / (spec.name or path.stem)
