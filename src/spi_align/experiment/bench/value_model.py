"""P2b and P3: a separate value model, scored on its own KV cache.

The value model is by default a second copy of the policy's backbone (loaded from the same source, so same size and
same tokenizer) with a scalar head; `bench.value_backbone` names another model instead. `values.guide.ValueModelGuide`
feeds it only the tokens sampled since its last call: the policy's token ids when the tokenizers match, else the
text re-tokenised where it changed (`hf/text_cache.py`).
P2b times SPI search guided by it against best-of-N (in the timed loop, as method 'spi-vm'). P3 times the value
model alone on synthetic responses of two lengths, fed chunk by chunk through the same selections a search makes
(W parents per prompt, K children each), so its time must grow with the response length, not its square.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from spi_align.config import BenchConfig
from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Cost, Prompt
from spi_align.experiment.bench.timing import Runner
from spi_align.search.beam import ChunkBeamSearch

KEY = "spi-vm"


def load_guide(cfg: BenchConfig, policy: Policy) -> tuple[Any | None, str]:
    """(guide, '') with a fresh value model on `bench.value_backbone` ('policy': a copy of the policy's backbone), or
    (None, why it is unavailable)."""
    try:
        from spi_align.values.guide import ValueModelGuide
        from spi_align.values.model import ValueModel
    except ImportError as exc:
        return None, f"no separate value model in this build ({exc})"
    source = cfg.policy.model if cfg.bench.value_backbone == "policy" else cfg.bench.value_backbone
    model = ValueModel.from_source(source, dtype=getattr(torch, cfg.policy.dtype), device=str(policy.device))
    return ValueModelGuide([model], [1.0], policy.tokenizer), ""


def spi_with_value_model(policy: Policy, reward: Scorer, cfg: BenchConfig, guide: Any) -> Runner:
    """SPI search (W, K, L as configured) guided by the separate value model."""
    return ChunkBeamSearch.from_config(policy, guide, reward, cfg.spi, KEY).run


@torch.no_grad()
def score_synthetic(
    guide: Any, policy: Policy, prompts: Sequence[Prompt], cfg: BenchConfig, length: int, seed: int
) -> dict[str, float]:
    """Seconds the value model spends on W·K responses of `length` tokens per prompt, fed `chunk` at a time:
    prefill of the prompts, feeding the new tokens, and reordering its cache after each selection."""
    spi = cfg.spi
    per_prompt = spi.candidates
    rows = policy.start(prompts, Cost())
    rows = rows.select(torch.arange(len(prompts), device=policy.device).repeat_interleave(per_prompt))
    gen = torch.Generator().manual_seed(seed)
    rows.response = torch.randint(100, len(policy.tokenizer), (rows.size, length), generator=gen).to(policy.device)
    rows.length = torch.zeros(rows.size, dtype=torch.long, device=policy.device)
    start = time.perf_counter()
    guide(rows)  # nothing generated yet: prefills the prompts
    seconds = {"prefill": time.perf_counter() - start, "feed": 0.0, "select": 0.0}
    for step in range(-(-length // spi.chunk)):
        if step > 0:  # like the search: W parents per prompt, K children each
            parents = torch.stack([torch.randperm(per_prompt, generator=gen)[: spi.width] for _ in prompts])
            parents = (parents + torch.arange(len(prompts))[:, None] * per_prompt).flatten()
            index = parents.repeat_interleave(spi.successors).to(policy.device)
            rows.response, rows.length = rows.response[index], rows.length[index]
            start = time.perf_counter()
            for state in rows.extras.values():
                state.select(index)
            seconds["select"] += time.perf_counter() - start
        rows.length = (rows.length + spi.chunk).clamp(max=length)
        start = time.perf_counter()
        guide(rows)
        seconds["feed"] += time.perf_counter() - start
    return seconds


def p3_seconds(
    guide: Any, policy: Policy, prompts: Sequence[Prompt], cfg: BenchConfig, lengths: Sequence[int], repeats: int
) -> dict[int, list[dict[str, float]]]:
    """`score_synthetic` for every length, `repeats` times, alternating the order of the lengths."""
    out: dict[int, list[dict[str, float]]] = {n: [] for n in lengths}
    for repeat in range(repeats):
        for n in lengths if repeat % 2 == 0 else list(reversed(lengths)):
            out[n].append(score_synthetic(guide, policy, prompts, cfg, n, cfg.seed + repeat))
    return out


def p3_summary(times: dict[int, list[dict[str, float]]]) -> dict[str, Any]:
    """Per length: median seconds of the value model excluding and including the prompts' prefill; and the ratio
    longest / shortest (paired per repeat, median [min–max])."""
    lengths = sorted(times)
    short, long = lengths[0], lengths[-1]

    def responses(t: dict[str, float]) -> float:
        return t["feed"] + t["select"]

    def ratios(f) -> list[float]:
        return [f(a) / f(b) for a, b in zip(times[long], times[short], strict=True)]

    excl, incl = ratios(responses), ratios(lambda t: sum(t.values()))
    return {
        "lengths": lengths,
        "seconds": {
            str(n): {
                "responses": statistics.median(responses(t) for t in times[n]),
                "with_prefill": statistics.median(sum(t.values()) for t in times[n]),
            }
            for n in lengths
        },
        "ratio": {"median": statistics.median(excl), "min": min(excl), "max": max(excl)},
        "ratio_with_prefill": {"median": statistics.median(incl), "min": min(incl), "max": max(incl)},
        "runs": {str(n): times[n] for n in lengths},
    }
