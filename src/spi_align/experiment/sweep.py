"""`spi sweep SPEC.yaml`: a grid of `spi run` configs, each cell cached by the hash of its resolved config.

A spec names a base config and what varies:

    name: sweep-chunk                 # the sweep's folder: <dir>/<name> (default: the spec file's stem)
    dir: runs/sweeps
    base: ../../configs/demo.yaml     # optional YAML config, relative to the spec file
    config: {data: {limit: 32}}       # optional inline config over the base
    grid:                             # every combination (dotted config keys)
      spi.chunk: [4, 8, 16, 32, 64]
      spi.train_prompts: [16, 32]
    variants:                         # optional: each grid cell once per variant (settings that go together)
      - {spi.selection: diversity}
      - {spi.selection: softmax, spi.temperature: 0.5}

Each cell is a run directory `<cells>/<hash>` (default cells folder: `<sweep>/cells`), the hash taken over the
resolved config (name and run_dir left out), so it does not depend on how the spec is written or ordered. A cell
whose directory holds results.json is skipped; an unfinished one resumes through `spi run`'s own resume. Sweeps
that name the same `cells` folder share identical cells. Cells that differ only in how the search runs (see
`SEARCH_ONLY`) or in the baselines they add share round 0: the rollouts, reward model, V_0 and the sample /
best-of-N evaluations are copied from another run in the cells folder before the cell runs, since `spi run` would
compute exactly the same files; V_0 too when the value settings (`VALUE_SETTINGS`) match. Likewise the beam-free
baselines between cells with the same baseline settings, and SPI's own rounds between cells that differ only in
their baselines (`SHARED_GROUPS`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spi_align.config import Config, build_config, merge_trees, read_yaml, set_dotted
from spi_align.core.errors import SpiError
from spi_align.experiment.sweep_report import write_sweep_report
from spi_align.experiment.sweep_spec import Cell, SweepSpec, load_spec
from spi_align.search.registry import spi_name

SEARCH_ONLY = (
    "spi.rounds",
    "spi.width",
    "spi.successors",
    "spi.chunk",
    "spi.selection",
    "spi.temperature",
    "spi.betas",
    "spi.gamma",
    "spi.base_logprob",
    "spi.reward_guide",
    "spi.draws",
    "spi.draw_temperature",
)
"""Settings that change only the guided search (rounds ≥ 1 and SPI's evaluation), never round 0's work (W and K
also name the compute-matched best-of-(W·K), whose file is shared only between cells with the same W·K); except
`spi.chunk` when round 0 is a sampling tree (it branches at chunk boundaries) or V_0 is anchored (fitted at the
decision lengths L, 2L, ...): see `leave_out_for`."""
VALUE_SETTINGS = (
    "spi.value",
    "spi.head",
    "spi.centered",
    "spi.ridge",
    "spi.rank_weights",
    "spi.per_depth",
    "spi.value_backbone",
    "spi.value_train_layers",
    "spi.value_epochs",
    "spi.value_lr",
    "spi.value_batch_size",
)
"""Settings that change only how value functions are built from the rollouts, never the rollouts of round 0, the
reward model or the sample / best-of-N evaluations."""
RUN_PLACE = ("name", "run_dir")
"""Where a run lives: left out of every hash."""


def _dump(config: Config, leave_out: tuple[str, ...]) -> dict[str, Any]:
    tree = config.model_dump(mode="json")
    for dotted in leave_out:
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return tree


def config_hash(config: Config, leave_out: tuple[str, ...] = RUN_PLACE) -> str:
    """A short stable hash of the resolved config (canonical JSON), without the given dotted keys."""
    text = json.dumps(_dump(config, leave_out), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def leave_out_for(config: Config, leave_out: tuple[str, ...]) -> tuple[str, ...]:
    """`leave_out` without `spi.chunk` when round 0 depends on it for this config: tree rollouts branch at chunk
    boundaries, and anchored values are fitted at the decision lengths L, 2L, ..."""
    if config.spi.tree or config.spi.value == "anchored":
        return tuple(k for k in leave_out if k != "spi.chunk")
    return leave_out


def round0_key(config: Config) -> str:
    """Cells with the same key compute the same round 0 up to V_0 (see SEARCH_ONLY and VALUE_SETTINGS; the
    baselines only add methods)."""
    return config_hash(config, leave_out_for(config, SHARED_GROUPS[0][0]))


def expand(spec: SweepSpec, folder: Path) -> list[Cell]:
    """Every grid combination × variant as a validated config, duplicates (same hash) dropped, in grid order."""
    base = read_yaml(spec.base) if spec.base else {}
    base = merge_trees(base, spec.config)
    keys = list(spec.grid)
    cells: dict[str, Cell] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        for variant in spec.variants or [{}]:
            settings = {**dict(zip(keys, values, strict=True)), **variant}
            tree = json.loads(json.dumps(base))  # a deep copy
            for dotted, value in settings.items():
                set_dotted(tree, dotted, value)
            tree["run_dir"] = spec.cells or str(folder / "cells")
            tree.pop("name", None)
            try:
                config: Config = build_config(Config, defaults=tree)
            except SpiError as exc:
                raise SpiError(f"sweep cell {settings}: {exc}") from None
            key = config_hash(config)
            config = config.model_copy(update={"name": key})
            cells.setdefault(key, Cell(settings, config, key))
    return list(cells.values())


def round0_paths(config: Config) -> list[str]:
    """Round 0's artefacts before any value function (rollouts, reward model, sample and best-of-N evaluations):
    they depend on neither the search, the value settings nor the baselines."""
    stems = ["rollouts-0", "eval-sample", f"eval-bon-{config.spi.candidates}"]
    return _stem_files(stems) + ["reward_model", "reward_model.json", "reward_model.cost.json"]


def value0_paths(config: Config) -> list[str]:
    """V_0 (with its metrics and its fit's recorded compute), and round 0's prefix states (read at the decision
    lengths when V_0 is anchored): depend on round 0 and the value settings."""
    from spi_align.spi import STATES_COST, STATES_DIR  # late: it loads torch, which a dry run never needs

    return ["values/round-0", "values/round-0.json", "values/round-0.cost.json", STATES_DIR, STATES_COST]


def baseline_paths(config: Config) -> list[str]:
    """The baselines that need no beam settings (DPO, BoN-I, the strong policy's sample and best-of-N): shared
    between runs with the same round 0 and the same baseline settings. Weak-to-strong search uses W, K and L, so it is
    never shared."""
    n = config.spi.candidates
    stems = ["eval-dpo", f"eval-bon-i-{n}", "eval-strong-sample", f"eval-strong-bon-{n}"]
    return _stem_files(stems) + ["dpo", "dpo.json"]


def search_paths(config: Config) -> list[str]:
    """SPI's own rounds ≥ 1 (rollouts, value functions, evaluations): shared between runs that differ only in
    which baselines they add."""
    rounds = range(1, config.spi.rounds + 1)
    values = [f"values/round-{k}{ext}" for k in rounds for ext in ("", ".json", ".cost.json")]
    return _stem_files([f"rollouts-{k}" for k in rounds] + [f"eval-{spi_name(k)}" for k in rounds]) + values


def _stem_files(stems: list[str]) -> list[str]:
    return [f"{s}{ext}" for s in stems for ext in (".jsonl", ".cost.json")]


SHARED_GROUPS: tuple[tuple[tuple[str, ...], Callable[[Config], list[str]]], ...] = (
    (RUN_PLACE + SEARCH_ONLY + ("baselines",) + VALUE_SETTINGS, round0_paths),
    (RUN_PLACE + SEARCH_ONLY + ("baselines",), value0_paths),
    (RUN_PLACE + SEARCH_ONLY + VALUE_SETTINGS, baseline_paths),
    (RUN_PLACE + ("baselines",), search_paths),
)
"""(settings left out of the key, artefacts): a run takes the artefacts from another run with the same key."""


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the filesystem allows, else a copy: artefacts are replaced atomically, and a method file
    that is appended to is first copied (`runs/files.py:append_jsonl`), so a link is never edited through."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _runs_in(folder: Path, exclude: Path) -> list[tuple[Path, Config]]:
    """Other runs in the cells folder with a readable config, finished ones first."""
    runs = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        saved = path / "config.yaml"
        if path == exclude or not saved.is_file():
            continue
        try:
            config = Config.model_validate(yaml.safe_load(saved.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError):  # a run from an older config schema: not comparable
            continue
        runs.append((path, config))
    return sorted(runs, key=lambda run: not (run[0] / "results.json").is_file())


def share_round0(cell: Cell) -> list[str]:
    """Copy into `cell` what other runs of its cells folder computed the same way: round 0 from runs with the same
    round-0 settings, the beam-free baselines from runs that also have the same baseline settings, and SPI's rounds
    from runs that differ only in their baselines (`SHARED_GROUPS`).

    Returns what was copied. A partial file is still worth copying: the run resumes after it.
    """
    runs = _runs_in(cell.path.parent, cell.path)
    copied = []
    for leave_out, paths in SHARED_GROUPS:
        leave_out = leave_out_for(cell.config, leave_out)
        key = config_hash(cell.config, leave_out)
        donors = [path for path, config in runs if config_hash(config, leave_out) == key]
        for name in paths(cell.config):
            target = cell.path / name
            donor = next((d / name for d in donors if (d / name).exists()), None)
            if target.exists() or donor is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if donor.is_dir():
                shutil.copytree(donor, target, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(donor), str(target))
            copied.append(name)
    return copied


def is_done(cell: Cell) -> bool:
    return (cell.path / "results.json").is_file()


def default_runner(config: Config) -> Any:
    """`spi run` on one config (imported late: it loads torch)."""
    from spi_align.experiment.spi_run import spi_run

    return spi_run(config)


def run_sweep(
    spec_path: str | Path,
    runner: Callable[[Config], Any] | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    max_cells: int | None = None,
) -> tuple[list[Cell], Path]:
    """Run every cell that has no results yet (unless dry_run; at most `max_cells` of them), then write the sweep's
    tables and plots."""
    spec, folder = load_spec(spec_path)
    cells = expand(spec, folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_manifest(spec, folder, cells)
    todo = [c for c in cells if not is_done(c)]
    log(f"sweep {folder}: {len(cells)} cells, {len(cells) - len(todo)} cached, {len(todo)} to run")
    if dry_run:
        for cell in cells:
            log(f"  {cell.key}  {'cached' if is_done(cell) else 'to run'}  {cell.settings}")
        return cells, folder
    run = runner or default_runner
    todo = todo[:max_cells] if max_cells is not None else todo
    for i, cell in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] cell {cell.key} {cell.settings}")
        copied = share_round0(cell)
        if copied:
            log(f"  round 0 reused from a run with the same round-0 settings: {', '.join(copied)}")
        run(cell.config)
        write_sweep_report(spec, folder, cells)
    write_sweep_report(spec, folder, cells)
    return cells, folder


def _write_manifest(spec: SweepSpec, folder: Path, cells: list[Cell]) -> None:
    from spi_align.runs.files import atomic_write_json

    atomic_write_json(
        folder / "cells.json",
        {
            "spec": spec.model_dump(mode="json"),
            "cells": [{"key": c.key, "settings": c.settings, "round0": round0_key(c.config)} for c in cells],
        },
    )
