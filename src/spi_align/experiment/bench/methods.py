"""What `spi bench` times: a plain sampling loop, best-of-(W·K), and SPI search guided by 1..R rounds of heads.

The heads are randomly initialised on the policy's hidden states: the bench measures cost, and a head's cost does
not depend on its weights. All methods share one policy and one reward scorer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.config import BenchConfig
from spi_align.experiment.bench.timing import Runner
from spi_align.interfaces import Cost, Prompt, Scorer
from spi_align.policy import HFPolicy
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch
from spi_align.values import HeadStack, ValueHead


def method_keys(cfg: BenchConfig, with_value_model: bool = False) -> dict[str, str]:
    """Roles → method keys: 'sample' (P4's reference loop, when timed), 'bon', 'spi-1'..'spi-R', and 'spi-vm'
    (SPI guided by a separate value model) when it is timed."""
    n = cfg.spi.candidates  # W·K per prompt for every method (compute-matched)
    keys = {"sample": f"sample-{n}"} if cfg.bench.plain_loop else {}
    keys["bon"] = f"bon-{n}"
    keys.update({f"spi-{k}": f"spi-{k}" for k in range(1, cfg.spi.rounds + 1)})
    if with_value_model:
        keys["spi-vm"] = "spi-vm"
    return keys


def random_heads(hidden_size: int, rounds: int, kind: str, seed: int) -> list[ValueHead]:
    """`rounds` randomly initialised value heads (seeded), one per round."""
    heads = []
    for i in range(rounds):
        torch.manual_seed(seed + 1000 + i)
        heads.append(ValueHead(hidden_size, kind).eval())  # type: ignore[arg-type]
    return heads


def guidance(heads: Sequence[ValueHead], cfg: BenchConfig, device: torch.device) -> HeadStack:
    """Σ_i γ V_i/β_i over `heads`, as `spi run` builds it."""
    weights = [cfg.spi.gamma / cfg.spi.beta(i) for i in range(len(heads))]
    return HeadStack(list(heads), weights).to(device)


class SampleLoop:
    """A plain batched sampling loop: `policy.sample` with W·K samples per prompt, nothing decoded or scored."""

    def __init__(self, policy: HFPolicy, n: int) -> None:
        self.policy, self.n = policy, n

    def __call__(self, prompts: Sequence[Prompt], cost: Cost) -> None:
        self.policy.sample(prompts, self.n, cost)


def build_methods(policy: HFPolicy, reward: Scorer, cfg: BenchConfig) -> dict[str, Runner]:
    """Method key → runner, in the order of `method_keys`."""
    spi, n = cfg.spi, cfg.spi.candidates
    heads = random_heads(policy.hidden_size, cfg.spi.rounds, cfg.spi.head, cfg.seed)
    keys = method_keys(cfg)
    methods: dict[str, Runner] = {}
    if "sample" in keys:
        methods[keys["sample"]] = SampleLoop(policy, n)
    methods[keys["bon"]] = BestOfN(policy, reward, n).run
    for k in range(1, cfg.spi.rounds + 1):
        stack = guidance(heads[:k], cfg, policy.device)
        search = ChunkBeamSearch.from_config(
            policy, lambda rows, stack=stack: stack(rows.hidden), reward, spi, f"spi-{k}"
        )
        methods[keys[f"spi-{k}"]] = search.run
    return methods
