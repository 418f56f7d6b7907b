"""`spi demo`: the SPI pipeline on the embedded default, sized to finish in about 20 minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spi_align.config import Config, build_config
from spi_align.experiment.spi_run import spi_run

DEMO_DEFAULTS: dict[str, Any] = {
    "name": "demo",
    "reward": "default",  # the head shipped for the default policy, fitted on none of the demo's prompts
    "evaluator": "similarity",
    "data": {"split": "eval", "limit": 16, "batch_size": 4},
    "generation": {"max_new_tokens": 48},
    "spi": {
        "rounds": 2,
        "width": 4,
        "successors": 4,
        "chunk": 8,
        "tree": [4, 2],
        "train_prompts": 32,
        "value": "anchored",
    },
}


def run_demo(config_path: str | Path | None, overrides: list[str]) -> str:
    """Plain sampling, best-of-16 and SPI rounds 1-2 on held-out AlpacaEval prompts; returns the report."""
    cfg: Config = build_config(Config, config_path, overrides, defaults=DEMO_DEFAULTS)
    return spi_run(cfg)
