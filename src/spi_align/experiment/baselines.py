"""The paper's baselines inside `spi run`: DPO (training-time), BoN-I and weak-to-strong search (implicit reward).

Each baseline is a `Search`, evaluated like the other methods, so its compute lands in the same counters. Budgets:
BoN-I samples W·K responses per prompt like BoN-E; weak-to-strong search runs spi's W, K, L like SPI (the same
generated tokens as BoN-(W·K) when nothing ends early); DPO draws one sample per prompt from the tuned policy,
like 'sample' (its cost is training, recorded in `dpo.json`).

For the embedded default there is no public tuned/reference pair, so one is made: DPO tunes the policy on the
preference pairs the reward model saw (the very same list: `SPIRun.round0_preferences`), and the untuned policy is
the reference. The tuned model is saved in the
run directory (`dpo/`, safetensors) and reused when the run resumes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spi_align.config import Config, PolicyConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy, Scorer, Search
from spi_align.policy import HFPolicy, load_policy
from spi_align.runs.rundir import RunDir
from spi_align.scoring.implicit import ImplicitReward
from spi_align.search import BestOfN, PlainSampling
from spi_align.search.registry import MethodContext, register
from spi_align.search.w2s import WeakToStrongSearch, implicit_best_of_n
from spi_align.train.dpo import PreferencePair

log = logging.getLogger(__name__)
DPO_DIR = "dpo"


class Baselines:
    """Builds the enabled baselines of one run (training the DPO model first when one is needed)."""

    def __init__(
        self,
        cfg: Config,
        run: RunDir,
        policy: Policy,
        reward: Scorer,
        pairs: Callable[[], Sequence[PreferencePair]],
    ) -> None:
        self.cfg, self.run, self.policy, self.reward, self.pairs = cfg, run, policy, reward, pairs
        self._dpo: Any = None
        self._strong: Policy | None = None
        self._implicit: ImplicitReward | None = None

    def _load(self, source: str | Path) -> Any:
        from transformers import AutoModelForCausalLM

        from spi_align.hf.models import resolve_model_source, to_device

        try:
            model = AutoModelForCausalLM.from_pretrained(
                resolve_model_source(str(source)), dtype=getattr(torch, self.cfg.policy.dtype)
            )
        except (OSError, ValueError) as exc:
            raise SpiError(f"could not load model '{source}': {str(exc).splitlines()[0]}") from None
        return to_device(model, self.policy.device).eval().requires_grad_(False)

    def _policy_model(self, what: str) -> Any:
        """The frozen policy's transformers model (what DPO tunes a copy of, the implicit reward's reference)."""
        if not isinstance(self.policy, HFPolicy):
            raise SpiError(f"{what} reads the policy's transformers model: it needs policy.backend=hf")
        return self.policy.model

    def dpo_model(self) -> Any:
        """The DPO-tuned copy of the policy: trained on the reward model's pairs once, then loaded from the run."""
        if self._dpo is not None:
            return self._dpo
        from spi_align.train.dpo import train_dpo

        folder = self.run.file(DPO_DIR)
        if not (folder / "config.json").is_file():
            b = self.cfg.baselines
            pairs = list(self.pairs())
            log.info("DPO: tuning a copy of the policy on %d preference pairs, %d steps", len(pairs), b.dpo_steps)
            start = time.perf_counter()
            with self.run.folder(DPO_DIR) as tmp:
                metrics = train_dpo(
                    self._policy_model("baselines.dpo"),
                    self.policy.tokenizer,
                    pairs,
                    tmp,
                    steps=b.dpo_steps,
                    batch_size=b.dpo_batch_size,
                    lr=b.dpo_lr,
                    beta=b.dpo_beta,
                    max_length=b.dpo_max_length,
                    seed=self.cfg.seed,
                    chat_template=self.policy.chat_template,
                )
                metrics["seconds"] = time.perf_counter() - start
                self.run.write_json("dpo.json", metrics)  # before the checkpoint counts as done
            log.info(
                "DPO: implicit-reward margin on its pairs %.3f, chosen wins %.0f%% (%.0fs)",
                metrics["train_margin"],
                100 * metrics["train_accuracy"],
                metrics["seconds"],
            )
        self._dpo = self._load(folder)
        return self._dpo

    def implicit(self) -> ImplicitReward:
        """The implicit reward of the configured pair (default: DPO-tuned policy against the frozen policy)."""
        from transformers import AutoTokenizer

        from spi_align.hf.models import resolve_model_source

        if self._implicit is not None:
            return self._implicit
        b = self.cfg.baselines
        tuned = self.dpo_model() if b.tuned is None else self._load(b.tuned)
        if b.reference is None:
            reference = self._policy_model("the implicit reward's reference")
        else:
            reference = self._load(b.reference)
        if b.tuned is None:
            tokenizer, chat = self.policy.tokenizer, self.policy.chat_template
        else:
            tokenizer, chat = AutoTokenizer.from_pretrained(resolve_model_source(b.tuned)), True
        self._implicit = ImplicitReward(tuned, reference, tokenizer, beta=b.implicit_beta, chat_template=chat)
        return self._implicit

    def _strong_policy(self, source: str) -> Policy:
        p = self.cfg.policy
        cfg = PolicyConfig(model=source, dtype=p.dtype, device=p.device, chat_template=p.chat_template)
        return load_policy(cfg, self.cfg.generation, self.cfg.seed)

    def names(self) -> list[str]:
        """Every enabled baseline's method name, in a fixed order."""
        b, n = self.cfg.baselines, self.cfg.spi.candidates
        out = ["dpo"] if b.dpo else []
        if b.bon_implicit:
            out.append(f"bon-i-{n}")
        if b.w2s:
            out += ["w2s"] if b.w2s_policy is None else ["strong-sample", f"strong-bon-{n}", "strong-w2s"]
        return out

    def dpo(self) -> Search:
        """One plain sample per prompt from the DPO-tuned copy of the policy."""
        tuned = HFPolicy(
            self.dpo_model(),
            self.policy.tokenizer,
            self.cfg.generation,
            chat_template=self.cfg.policy.chat_template,
            seed=self.cfg.seed,
        )
        return PlainSampling(tuned)

    def strong(self) -> Policy:
        """The policy weak-to-strong search guides (the frozen policy, or `w2s_policy` loaded once)."""
        source = self.cfg.baselines.w2s_policy
        if source is None:
            return self.policy
        if self._strong is None:
            self._strong = self._strong_policy(source)
        return self._strong

    def w2s(self) -> Search:
        """Weak-to-strong search with spi's W, K, L on the guided policy."""
        b, spi = self.cfg.baselines, self.cfg.spi
        search = WeakToStrongSearch(
            self.strong(), self.implicit(), spi.width, spi.successors, spi.chunk, b.w2s_selection, spi.temperature
        )
        how = "reads the policy's token ids" if search.shared_tokens else "re-tokenises the policy's text"
        log.info("weak-to-strong search: the implicit-reward pair %s", how)
        return search


def _provider(ctx: MethodContext) -> Baselines:
    provider = ctx.extras.get("baselines")
    if not isinstance(provider, Baselines):
        raise SpiError("the paper's baselines are evaluated inside `spi run` (enable them in its baselines section)")
    return provider


def _offered(keep: Callable[[str], bool]) -> Callable[[MethodContext], list[str]]:
    """The enabled baselines' names that `keep` accepts (none outside `spi run`)."""

    def names(ctx: MethodContext) -> list[str]:
        provider = ctx.extras.get("baselines")
        return [n for n in provider.names() if keep(n)] if isinstance(provider, Baselines) else []

    return names


@register("dpo", _offered(lambda n: n == "dpo"), "one sample from the DPO-tuned policy")
def _dpo(match: re.Match[str], ctx: MethodContext) -> Search:
    return _provider(ctx).dpo()


@register(r"bon-i-(\d+)", _offered(lambda n: n.startswith("bon-i-")), "best-of-N by the implicit reward (BoN-I)")
def _bon_implicit(match: re.Match[str], ctx: MethodContext) -> Search:
    b = _provider(ctx)
    return implicit_best_of_n(b.policy, b.implicit(), int(match.group(1)))


@register("w2s|strong-w2s", _offered(lambda n: n.endswith("w2s")), "weak-to-strong search (implicit reward)")
def _w2s(match: re.Match[str], ctx: MethodContext) -> Search:
    return _provider(ctx).w2s()


@register("strong-sample", _offered(lambda n: n == "strong-sample"), "one sample from the strong policy")
def _strong_sample(match: re.Match[str], ctx: MethodContext) -> Search:
    return PlainSampling(_provider(ctx).strong())


@register(r"strong-bon-(\d+)", _offered(lambda n: n.startswith("strong-bon-")), "best-of-N on the strong policy")
def _strong_bon(match: re.Match[str], ctx: MethodContext) -> Search:
    return BestOfN(_provider(ctx).strong(), ctx.needs_reward(match.group(0)), int(match.group(1)))
