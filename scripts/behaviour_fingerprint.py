"""A behaviour fingerprint: a fixed-seed tiny `spi run` on CPU, printed as JSON (tokens, scores and cost counters).

Use it to check that a refactor changes nothing a user can see: run it before the change and after, and compare.

    python scripts/behaviour_fingerprint.py > /tmp/fingerprint-before.json
    ... change the code ...
    python scripts/behaviour_fingerprint.py > /tmp/fingerprint-after.json
    cmp /tmp/fingerprint-before.json /tmp/fingerprint-after.json   # must be identical

It builds a tiny randomly initialised Llama policy (2 layers, 32 wide, seed 0) on the real SmolLM2 tokenizer from
the asset cache (`spi assets --fetch`), as the tests' conftest does, and runs three `spi run`s (the library call
behind the command) with 4 training and 2 eval prompts, 8 new tokens and one round: the anchored value with a
trained reward (plus DPO, BoN-I and weak-to-strong search), the linear value heads, and the value model. For every
evaluated method it prints each prompt's chosen response and candidates (token ids and texts), the evaluator's and
the reward's scores, and the cost counters; wall-clock times are left out. It runs in under a minute on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVALUATOR = str(ROOT / "tests" / "mocks" / "scorers.py") + ":vowel_share"
TIMES = {"seconds", "wall", "time"}

RUNS: dict[str, list[str]] = {
    "anchored": [
        "reward=train", "spi.value=anchored", "spi.tree=[2,2]", "baselines.dpo=true", "baselines.bon_implicit=true",
        "baselines.w2s=true", "baselines.dpo_steps=2", "baselines.dpo_batch_size=2",
    ],
    "heads": [f"reward={EVALUATOR}", "spi.value=heads", "spi.tree=[2,2]"],
    "model": [
        f"reward={EVALUATOR}", "spi.value=model", "spi.tree=[2,2]", "spi.value_epochs=1", "spi.value_batch_size=4",
    ],
}  # fmt: skip


def tiny_model(folder: Path) -> Path:
    """A seeded tiny random LlamaForCausalLM saved with the SmolLM2 tokenizer in `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from spi_align.data.assets import policy_dir

    tokenizer = AutoTokenizer.from_pretrained(policy_dir())
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prompts(path: Path, count: int, kind: str) -> Path:
    rows = [{"prompt": f"{kind} question {i}: name a colour.", "reference": "Blue."} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def without_times(value: Any) -> Any:
    """`value` with every key that names a wall-clock time dropped (recursively)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if not any(t in k for t in TIMES)}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def fingerprint(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())["results"]
    out: dict[str, Any] = {}
    for method, result in sorted(results.items()):
        lines = (run / f"eval-{method}.jsonl").read_text().splitlines()
        out[method] = {"result": without_times(result), "records": [without_times(json.loads(x)) for x in lines]}
    return out


def main() -> int:
    logging.disable(logging.CRITICAL)
    from spi_align.config import Config, build_config
    from spi_align.experiment.spi_run import spi_run

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = tiny_model(base / "model")
        train = prompts(base / "train.jsonl", 4, "train")
        held = prompts(base / "eval.jsonl", 2, "eval")
        common = [
            f"policy.model={model}", f"run_dir={base / 'runs'}", f"evaluator={EVALUATOR}", f"data.prompts={held}",
            f"data.train_prompts={train}", "data.batch_size=2", "generation.max_new_tokens=8", "spi.chunk=4",
            "spi.width=2", "spi.successors=2", "spi.rollouts=2", "spi.rounds=1", "seed=0",
        ]  # fmt: skip
        out = {}
        for name, extra in RUNS.items():
            with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs
                spi_run(build_config(Config, None, [*common, f"name={name}", *extra]))
            out[name] = fingerprint(base / "runs" / name)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
