"""Task 2's selection prompts: the AlpacaEval training prompts that round 0 never sees.

Task 2's round 0 rolls out the first 128 prompts of the training split (`spi.train_prompts` of
../quality-sentiment-tree, read from there); every value fit chooses and measures inside those. The prompts after
them are training prompts no rollout, fit or choice saw, and no eval prompt: the strength sweep scores its settings
on the first 48 of them. Writes `<out>/select.jsonl` (id, prompt, reference); not committed (AlpacaEval's licence),
rebuilt from the cached default prompts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spi_align.config import Config, DataConfig, build_config
from spi_align.data.prompts import load_prompts

TASK2 = Path(__file__).parents[1] / "quality-sentiment-tree" / "config.yaml"
ROUND0_PROMPTS = build_config(Config, TASK2).spi.train_prompts


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rest = load_prompts(DataConfig(split="train"))[ROUND0_PROMPTS:]
    rows = [json.dumps({"id": p.id, "prompt": p.text, "reference": p.reference}) for p in rest]
    (folder / "select.jsonl").write_text("\n".join(rows) + "\n")
    print(f"select: {len(rows)} prompts")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/task2-prompts")
