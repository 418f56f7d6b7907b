"""Everything a bench process loads once: prompts, policy, reward scorer and the methods built on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spi_align.config import BenchConfig
from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Prompt
from spi_align.data.prompts import load_prompts
from spi_align.experiment.bench.methods import backend_methods, build_methods
from spi_align.experiment.bench.timing import Runner
from spi_align.experiment.bench.value_model import KEY, load_guide, spi_with_value_model
from spi_align.policy import load_policy
from spi_align.scoring import make_scorer


@dataclass
class BenchContext:
    cfg: BenchConfig
    prompts: list[Prompt]
    policy: Policy
    reward: Scorer
    methods: dict[str, Runner]
    others: dict[str, Policy] = field(default_factory=dict)
    """The other backends' policies (`bench.backends`), by backend name; their methods are keyed 'BACKEND:...'."""
    guide: Any | None = None
    """The separate value model's search guidance (P2b/P3), when measured."""
    guide_note: str = "bench.value_model off"
    """Why there is no guide, when there is none."""

    @classmethod
    def load(cls, cfg: BenchConfig, value_model: bool = True, other_backends: bool = True) -> BenchContext:
        """Load everything; the separate value model (method 'spi-vm') only when `value_model` and configured, the
        other backends (`bench.backends`) only when `other_backends`."""
        prompts = load_prompts(cfg.data)
        policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
        reward = make_scorer(cfg.reward, device=str(policy.device), dtype=cfg.policy.dtype, policy=policy)
        ctx = cls(cfg, prompts, policy, reward, build_methods(policy, reward, cfg))
        for backend in cfg.bench.backends if other_backends else []:
            if backend != cfg.policy.backend and backend not in ctx.others:
                other = load_policy(cfg.policy.model_copy(update={"backend": backend}), cfg.generation, cfg.seed)
                ctx.others[backend] = other
                ctx.methods.update(backend_methods(backend, other, reward, cfg))
        if value_model and cfg.bench.value_model:
            ctx.guide, ctx.guide_note = load_guide(cfg, policy)
            if ctx.guide is not None:
                ctx.methods[KEY] = spi_with_value_model(policy, reward, cfg, ctx.guide)
        return ctx

    def reseed(self) -> None:
        """Every timed run starts from the configured seed (on every backend)."""
        for policy in (self.policy, *self.others.values()):
            policy.reseed(self.cfg.seed)
