"""Everything a bench process loads once: prompts, policy, reward scorer and the methods built on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spi_align.config import BenchConfig
from spi_align.data import load_prompts
from spi_align.experiment.bench.methods import build_methods
from spi_align.experiment.bench.timing import Runner
from spi_align.experiment.bench.value_model import KEY, load_guide, spi_with_value_model
from spi_align.interfaces import Prompt, Scorer
from spi_align.policy import HFPolicy, load_policy
from spi_align.scoring import make_scorer


@dataclass
class BenchContext:
    cfg: BenchConfig
    prompts: list[Prompt]
    policy: HFPolicy
    reward: Scorer
    methods: dict[str, Runner]
    guide: Any | None = None
    """The separate value model's search guidance (P2b/P3), when measured."""
    guide_note: str = "bench.value_model off"
    """Why there is no guide, when there is none."""

    @classmethod
    def load(cls, cfg: BenchConfig, value_model: bool = True) -> BenchContext:
        """Load everything; the separate value model (method 'spi-vm') only when `value_model` and configured."""
        prompts = load_prompts(cfg.data)
        policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
        reward = make_scorer(cfg.reward, device=str(policy.device))
        ctx = cls(cfg, prompts, policy, reward, build_methods(policy, reward, cfg))
        if value_model and cfg.bench.value_model:
            ctx.guide, ctx.guide_note = load_guide(cfg, policy)
            if ctx.guide is not None:
                ctx.methods[KEY] = spi_with_value_model(policy, reward, cfg, ctx.guide)
        return ctx

    def reseed(self) -> None:
        """Every timed run starts from the configured seed."""
        self.policy.reseed(self.cfg.seed)
