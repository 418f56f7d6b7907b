"""Compare two finished runs of the same config on two backends: per-step seconds and forward tokens from each run's
`*.cost.json` artefacts, the evaluator mean and interval per method from `results.json`, and the whole command's
wall / CPU time from `/usr/bin/time` (`time-<backend>.txt` beside this script). Prints a Markdown table.

    python results/demo-backends/compare.py runs/demo-hf runs/demo-vllm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spi_align.experiment.report import bootstrap_ci


def costs(run: Path) -> dict[str, dict]:
    """Step name -> its cost (the `cost` of every `*.cost.json` under the run, named by its path)."""
    out = {}
    for file in sorted(run.rglob("*.cost.json")):
        name = str(file.relative_to(run)).removesuffix(".cost.json")
        out[name] = json.loads(file.read_text())["cost"]
    return out


def seconds(cost: dict) -> float:
    return sum(cost.get("seconds", {}).values())


def forward(cost: dict) -> int:
    return sum(cost.get("forward_tokens", {}).values())


def main(hf_run: str, vllm_run: str) -> None:
    runs = {"transformers": Path(hf_run), "vLLM": Path(vllm_run)}
    here = Path(__file__).parent
    cost = {name: costs(run) for name, run in runs.items()}
    steps = sorted(
        set().union(*cost.values()), key=lambda s: (not s.startswith(("rollouts", "prefix", "reward", "values")), s)
    )
    print("| step | " + " | ".join(f"{n} s | {n} forward tokens" for n in runs) + " | vLLM / transformers |")
    print("|---|" + "---|---|" * len(runs) + "---|")
    for step in steps:
        cells, secs = [], []
        for name in runs:
            c = cost[name].get(step)
            secs.append(seconds(c) if c else None)
            cells += [f"{seconds(c):.1f}", f"{forward(c):,}"] if c else ["—", "—"]
        ratio = f"{secs[1] / secs[0]:.2f}×" if None not in secs and secs[0] else "—"
        print(f"| {step} | " + " | ".join(cells) + f" | {ratio} |")
    times = {}
    for name, tag in zip(runs, ("hf", "vllm"), strict=True):
        file = here / f"time-{tag}.txt"
        if file.exists():
            wall, user, system = (float(x) for x in file.read_text().split()[-3:])
            times[name] = (wall, user + system)
    if times:
        print("\n| whole `spi demo` | wall s | CPU s (user + system) |\n|---|---|---|")
        for name, (wall, cpu) in times.items():
            print(f"| {name} | {wall:.0f} | {cpu:.0f} |")
    print("\n| method | " + " | ".join(f"{n}: evaluator mean [95% CI]" for n in runs) + " |")
    print("|---|" + "---|" * len(runs))
    results = {name: json.loads((run / "results.json").read_text())["results"] for name, run in runs.items()}
    for method in results["transformers"]:
        cells = []
        for name in runs:
            scores = results[name].get(method, {}).get("evaluator")
            if scores:
                low, high = bootstrap_ci(scores)
                cells.append(f"{sum(scores) / len(scores):.3f} [{low:.3f}, {high:.3f}]")
            else:
                cells.append("—")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
