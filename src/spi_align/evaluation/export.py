"""`spi export RUN_DIR`: a finished run's answers in AlpacaEval's `model_outputs` format, one file per method.

Each file is a JSON list of {instruction, output, generator, dataset?}, ready for
`alpaca_eval --model_outputs RUN_DIR/alpaca_eval/spi-2.json` (against GPT-4's outputs, as in the paper's Table 2), or
with `--reference_outputs RUN_DIR/alpaca_eval/bon-16.json` (the paper's "compared against BoN-E" columns).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from spi_align.experiment.outputs import load_answers, open_run, pick_methods
from spi_align.runs.files import atomic_write_json


def _datasets(run: Path) -> dict[str, str]:
    """AlpacaEval's `dataset` field of each default prompt, when the run used the default prompts (else empty)."""
    config = run / "config.yaml"
    saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    if not isinstance(saved, dict) or (saved.get("data") or {}).get("prompts") != "default":
        return {}
    from spi_align.core.errors import SpiError
    from spi_align.data.assets import default_prompts_file

    try:
        path = default_prompts_file()
    except SpiError:
        return {}
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("dataset"):
                out[str(row["id"])] = row["dataset"]
    return out


def model_outputs(run: Path, method: str, datasets: dict[str, str]) -> list[dict[str, Any]]:
    """One method's answers as AlpacaEval `model_outputs` records."""
    generator = f"{run.name}/{method}"
    records = []
    for answer in load_answers(run, method):
        record: dict[str, Any] = {"instruction": answer.instruction, "output": answer.output, "generator": generator}
        if answer.id in datasets:
            record["dataset"] = datasets[answer.id]
        records.append(record)
    return records


def export_run(run_dir: str | Path, methods: list[str] | None = None, out: str | Path | None = None) -> list[Path]:
    """Write `<out>/<method>.json` for each method (default out: RUN_DIR/alpaca_eval); returns the files."""
    run = open_run(run_dir)
    folder = Path(out) if out else run / "alpaca_eval"
    datasets = _datasets(run)
    written = []
    for method in pick_methods(run, methods):
        path = folder / f"{method}.json"
        atomic_write_json(path, model_outputs(run, method, datasets))
        written.append(path)
    return written
