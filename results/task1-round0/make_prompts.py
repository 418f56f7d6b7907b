"""Split the 605 AlpacaEval training prompts into a fitting side and a selection side, by a hash of each id.

The selection side (sha256("select/" + id) mod 5 == 0, about a fifth) is never rolled out, labelled or fitted on:
choices between search settings (the diversity key) are measured there, on training prompts, and never on the
eval prompts. Writes `<out>/fit.jsonl` and `<out>/select.jsonl` (id, prompt, reference); the data are not
committed (AlpacaEval's licence), this script rebuilds them from the cached default prompts.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from spi_align.config import DataConfig
from spi_align.data.prompts import load_prompts


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    sides: dict[str, list[str]] = {"fit": [], "select": []}
    for p in load_prompts(DataConfig(split="train")):
        side = "select" if int(hashlib.sha256(f"select/{p.id}".encode()).hexdigest(), 16) % 5 == 0 else "fit"
        sides[side].append(json.dumps({"id": p.id, "prompt": p.text, "reference": p.reference}))
    for side, rows in sides.items():
        (folder / f"{side}.jsonl").write_text("\n".join(rows) + "\n")
        print(f"{side}: {len(rows)} prompts")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/task1-prompts")
