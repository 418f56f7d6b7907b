"""Algorithm 1 as a library API: successive policy iterations over a frozen policy, and the policy they improve.

    spi = SuccessivePolicyIteration(policy, reward, cfg, workdir)
    improved = spi.fit(train_prompts)          # rounds k = 0..K-1: roll out π_k, score, fit V_k (eq. 12)
    improved.save("my-policy")                 # values, reward head and settings
    improved = load("my-policy")               # or a finished `spi run` directory
    results = improved.search().run(prompts, Cost())   # π_K: chunk search guided by Σ_i γ V_i/β_i (eq. 13)

Round k rolls out π_k (π_0 = the base policy: a sampling tree branched at chunk boundaries, `spi.tree`,
`search/tree.py`, or `spi.rollouts` plain samples per prompt when tree = []; later rounds the guided search, or
`spi.draws` independent one-beam draws of it per prompt, `search/draws.py`),
scores every rollout with the reward, and trains V_k on every prefix of them with the configured value kind
(`values/kinds.py`). π_k is the chunk beam search (Algorithm 2) guided by Σ_{i<k} γ V_i/β_i, plus w · the reward
on the partial response when `spi.reward_guide` = w > 0. Every step is saved in `workdir` when it finishes and
skipped when it is already there, so an interrupted `fit` resumes. A checkpoint and its metrics are one unit: the
metrics are written before the checkpoint folder is renamed into place, so a round that counts as done has both;
the fit's compute (`values/round-k.cost.json`, training in the compute frontier) is written with them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spi_align.config import Config, build_config
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import HiddenStatePolicy, Policy, Scorer, Search, ValueFunction, hidden_state_policy
from spi_align.core.records import Cost, Prompt
from spi_align.runs.resumable import run_method, save_cost
from spi_align.runs.rundir import RunDir
from spi_align.scoring.finite import finite_scores
from spi_align.search.registry import MethodContext, build_method, method_names, spi_name
from spi_align.values.kinds import Rollouts, ValueKind, make_value_kind

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
REWARD_DIR = "reward_model"
REWARD_COST = "reward_model.cost.json"
"""The compute of fitting the reward model (reward: train): seconds, and the forward tokens the fit runs (a head fit
runs none: it reads round 0's prefix states); a tuning of top layers launched on its own records none."""
STATES_DIR = "rollouts-0.states"
"""Round 0's rollouts with their prefix states (`spi run`), shared by the reward model and V_0."""
STATES_COST = f"{STATES_DIR}.cost.json"
"""The compute of those prefix states: the forward tokens of their teacher-forced pass and end tokens."""


def round_folder(k: int) -> str:
    return f"values/round-{k}"


def fit_cost_file(k: int) -> str:
    """The compute of V_k's fit (seconds, and the forward tokens it ran), written with its checkpoint."""
    return f"{round_folder(k)}.cost.json"


def proxy_agreement(data: Rollouts, seed: int) -> dict[str, float]:
    """How the reward that guides and picks agrees with the labeller (the judge) on one round's own rollouts, on the
    held-out prompts the value's figures are read on (`heldout_split` with the same seed):
    `heldout_reward_judge_accuracy` (pairs of one prompt's rollouts whose labels differ, a tie ½) and
    `heldout_reward_judge_spearman` (within prompt), as `agreement` computes them. Round k ≥ 1's rollouts are the
    guided search's own candidates (or its draws, `spi.draws`), so a round that does not beat the one before shows
    here whether the proxy still tells its candidates apart. {} without labels or held-out prompts. With reward:
    train round 0's figure is optimistic (the reward was fitted on those labels)."""
    from spi_align.scoring.ranking import agreement
    from spi_align.values.round import heldout_split

    groups = [p.id for p in data.prompts]
    _, test = heldout_split(groups, seed)
    if data.labels is None or not test:
        return {}
    pick = lambda xs: [xs[i] for i in test]  # noqa: E731
    found = agreement(pick(data.rewards), pick(data.labels), pick(groups))
    return {"heldout_reward_judge_accuracy": found["accuracy"], "heldout_reward_judge_spearman": found["spearman"]}


class ImprovedPolicy:
    """π_1 .. π_K: the frozen policy, the reward that picks, and the value functions V_0 .. V_{K-1}.

    Satisfies what `spi serve` needs: `available_methods()` and `method(name, width, successors, chunk)`.
    """

    def __init__(self, policy: Policy, reward: Scorer, kind: ValueKind, values: Sequence[Any], cfg: Config) -> None:
        self.policy, self.reward, self.kind, self.cfg = policy, reward, kind, cfg
        kind.reward = reward
        self.values = list(values)
        self._partial: ValueFunction | None = None

    @property
    def rounds(self) -> int:
        return len(self.values)

    def guidance(self, k: int) -> ValueFunction | None:
        """The guidance of π_k: Σ_{i<k} γ V_i/β_i, plus w · the reward on the partial response (spi.reward_guide)."""
        spi = self.cfg.spi
        weights = [spi.gamma / spi.beta(i) for i in range(k)]
        value = self.kind.guide(self.values[:k], weights) if k > 0 else None
        if spi.reward_guide <= 0:
            return value
        from spi_align.values.reward_guide import partial_reward_value, weighted_sum

        if self._partial is None:
            self._partial = partial_reward_value(self.reward, self.policy)
        return weighted_sum([(1.0, value), (spi.reward_guide, self._partial)])

    def context(self, width: int | None = None, successors: int | None = None, chunk: int | None = None):
        """The method context, with the beam shape optionally overridden (W, K, L)."""
        update = {k: v for k, v in {"width": width, "successors": successors, "chunk": chunk}.items() if v is not None}
        spi = self.cfg.spi.model_validate({**self.cfg.spi.model_dump(), **update}) if update else self.cfg.spi
        return MethodContext(self.policy, self.reward, spi, self.rounds, self.guidance)

    def available_methods(self) -> list[str]:
        """Method names this policy serves: 'sample', 'bon-N' (N = W·K), 'spi-1' .. 'spi-K'."""
        return method_names(self.context())

    def method(
        self, name: str, width: int | None = None, successors: int | None = None, chunk: int | None = None
    ) -> Search:
        """The search called `name`, with the beam shape optionally overridden."""
        return build_method(name, self.context(width, successors, chunk))

    def search(self, k: int | None = None) -> Search:
        """π_k (default: π_K, guided by every value function)."""
        return self.method(spi_name(self.rounds if k is None else k))

    def sampler(self, k: int, draws: int, temperature: float) -> Search:
        """π_k as the stochastic policy of eq. 13, drawn `draws` times per prompt (`search/draws.py`): one-beam
        searches whose next chunk is drawn among K base samples by softmax(guidance / temperature)."""
        from spi_align.search.beam import ChunkBeamSearch
        from spi_align.search.draws import RepeatedDraws

        if not 1 <= k <= self.rounds:
            raise SpiError(f"π_{k} needs V_0 .. V_{k - 1}; {self.rounds} are trained")
        shape = {"width": 1, "selection": "softmax", "temperature": temperature}
        spi = self.cfg.spi.model_validate({**self.cfg.spi.model_dump(), **shape})
        one = ChunkBeamSearch.from_config(self.policy, self.guidance(k), self.reward, spi, spi_name(k), trace=False)
        return RepeatedDraws(one, draws)

    def save(self, folder: str | Path) -> Path:
        """Settings, every V_k and (for a trained reward head) the reward head, each written atomically."""
        run = RunDir(Path(folder).parent, Path(folder).name)
        run.start(self.cfg)
        for k, value in enumerate(self.values):
            with run.folder(round_folder(k)) as tmp:
                self.kind.save(value, tmp)
        if self.cfg.reward == "train" and getattr(self.reward, "model", None) is not None:
            from spi_align.scoring.reward_model import save_trained_reward

            with run.folder(REWARD_DIR) as tmp:
                save_trained_reward(self.reward, tmp)
        run.commit()
        return run.path


def load(path: str | Path, device: str | None = None) -> ImprovedPolicy:
    """An improved policy saved by `ImprovedPolicy.save`, or a finished `spi run` directory."""
    from spi_align.policy import load_policy

    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise SpiError(f"{folder} is not a saved SPI policy or run directory (no {CONFIG_FILE})")
    cfg = build_config(Config, str(folder / CONFIG_FILE), [])
    if device is not None:
        cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"device": device})})
    policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
    reward = load_reward(cfg, folder, policy)
    kind = make_value_kind(policy, cfg.spi, cfg.policy.model, cfg.seed)
    kind.reward = reward  # what a value model started from the reward is rebuilt on
    values = []
    for k in range(cfg.spi.rounds):
        round_dir = folder / round_folder(k)
        if not kind.saved(round_dir):
            break
        values.append(kind.load(round_dir))
    if not values:
        raise SpiError(f"{folder} holds no trained value function ({round_folder(0)} is missing)")
    return ImprovedPolicy(policy, reward, kind, values, cfg)


def load_reward(cfg: Config, folder: Path, policy: Policy) -> Scorer:
    """The run's reward: its trained reward head on the policy (`reward: train`), its reward model with tuned top
    layers (`reward_model.layers` > 0: a transformers classifier, run on the policy's lower layers when it shares
    them, `scoring/top_layers.py`, else whole), or the configured scorer."""
    from spi_align.scoring import make_scorer
    from spi_align.scoring.reward_model import SPEC_FILE, RewardModel
    from spi_align.scoring.row_reward import PolicyHeadReward

    if cfg.reward == "default" and cfg.policy.model == "default" and isinstance(policy, HiddenStatePolicy):
        from spi_align.data.assets import default_reward_dir  # the shipped head, on the policy's own backbone

        shipped = RewardModel.load(default_reward_dir(), device=str(policy.device), backbone=policy.backbone)
        return PolicyHeadReward(shipped, policy)
    if cfg.reward != "train":
        return make_scorer(cfg.reward, device=str(policy.device), dtype=cfg.policy.dtype, policy=policy)

    reward_dir = folder / REWARD_DIR
    if not (reward_dir / SPEC_FILE).is_file() and (reward_dir / "config.json").is_file():
        from spi_align.scoring.top_layers import top_layers_reward

        shared = top_layers_reward(reward_dir, policy, folder / "reward_model.json")
        if shared is not None:
            return shared
        return make_scorer(str(reward_dir), device=str(policy.device), dtype=cfg.policy.dtype, policy=policy)
    if not (reward_dir / SPEC_FILE).is_file():
        raise SpiError(f"{folder} was run with reward: train but holds no trained reward model ({REWARD_DIR}/)")
    states = hidden_state_policy(policy, "reward: train (a reward head on the policy's own backbone)")
    model = RewardModel.load(reward_dir, device=str(policy.device), backbone=states.backbone)
    return PolicyHeadReward(model, states)


class SuccessivePolicyIteration:
    """Algorithm 1: K rounds of (roll out π_k, score with the reward, fit V_k); each step resumable in `workdir`."""

    def __init__(self, policy: Policy, reward: Scorer | None, cfg: Config, workdir: RunDir) -> None:
        """`reward` scores the rollouts and picks answers; it may be set later (round 0's rollouts need none)."""
        self.policy, self.reward, self.cfg, self.run = policy, reward, cfg, workdir
        self.kind = make_value_kind(policy, cfg.spi, cfg.policy.model, cfg.seed)
        self.values: list[Any] = []
        self.labeller: Scorer | None = None
        """The held-out evaluator, when set (`spi run` sets it): it labels each round's rollouts being fitted on, so
        that every V_k's held-out ranking is also reported against the judge (`Rollouts.labels`); no value is fitted
        on these labels."""

    def improved(self) -> ImprovedPolicy:
        """The policy improved by the value functions trained so far."""
        if self.reward is None:
            raise SpiError("successive policy iteration needs a reward before round 0's value function")
        return ImprovedPolicy(self.policy, self.reward, self.kind, self.values, self.cfg)

    def rollouts(self, k: int, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        """Round k's rollouts on `prompts` (saved as `rollouts-k.jsonl`): π_0 = a sampling tree (branched
        `spi.tree[j]` ways at chunk boundary j·L, every leaf kept: siblings share prefixes), or `spi.rollouts` plain
        samples per prompt when `spi.tree` is []; π_k for k ≥ 1 = the search guided by V_0 .. V_{k-1}, every
        candidate it finished kept, or with `spi.draws` that many independent draws of π_k per prompt
        (`ImprovedPolicy.sampler`)."""
        from spi_align.search.best_of_n import PlainSampling
        from spi_align.search.tree import TreeSampling

        spi = self.cfg.spi
        if k > 0 and spi.draws is not None:
            search: Search = self.improved().sampler(k, spi.draws, spi.draw_temperature)
        elif k > 0:
            search = self.improved().search(k)
        elif spi.tree:
            search = TreeSampling(self.policy, spi.tree, spi.chunk)
        else:
            search = PlainSampling(self.policy, spi.rollouts)
        log.info("round %d: rollouts (%s) on %d training prompts", k, search.name, len(prompts))
        records, _ = run_method(
            self.run, f"rollouts-{k}", search, prompts, self.cfg.data.batch_size, self.policy.reseed, self.cfg.seed
        )
        return records

    def scored(self, records: Sequence[dict[str, Any]], prompts: Sequence[Prompt]) -> Rollouts:
        """Every candidate of the records with its reward (plain-sampling rollouts are scored here)."""
        from spi_align.values.round import flatten_rollouts

        by_id = {p.id: p for p in prompts}
        flat_prompts, tokens, scores = flatten_rollouts(records, by_id)
        if any(s is None for s in scores):
            if self.reward is None:
                raise SpiError("successive policy iteration needs a reward to score rollouts")
            texts = self.policy.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            rewards = finite_scores(self.reward, self.reward.score(flat_prompts, texts), texts)
        else:
            rewards = [float(s) for s in scores if s is not None]
        return self.labelled(Rollouts(flat_prompts, [list(t) for t in tokens], rewards))

    def labelled(self, data: Rollouts) -> Rollouts:
        """`data` with the labeller's score of each rollout (as it is when there is no labeller or it has them)."""
        if self.labeller is None or data.labels is not None:
            return data
        texts = self.policy.tokenizer.batch_decode(data.tokens, skip_special_tokens=True)
        data.labels = finite_scores(self.labeller, self.labeller.score(data.prompts, texts), texts)
        return data

    def fit_round(
        self, k: int, records: Sequence[dict[str, Any]], prompts: Sequence[Prompt], data: Rollouts | None = None
    ) -> Any:
        """V_k from round k's rollouts (`data`: already scored, e.g. with shared prefix states), trained once and
        then loaded from `values/round-k/`."""
        self.kind.reward = self.reward
        folder = self.run.file(round_folder(k))
        if self.kind.saved(folder):
            if k > 0:  # a round fitted before its metrics had the proxy's agreement: measured now, once
                self.measure_saved(k, records, prompts)
            return self.kind.load(folder)
        data = self.labelled(data) if data is not None else self.scored(records, prompts)
        log.info("round %d: training V_%d (%s) on %d rollouts", k, k, self.kind.name, len(data))
        cost = Cost()
        with cost.timer("fit"):  # the fit's forwards (states it reads, a value model's passes) bill to it
            value, metrics = self.kind.fit(data)
        metrics.update(proxy_agreement(data, self.cfg.seed))
        with self.run.folder(round_folder(k)) as tmp:
            self.kind.save(value, tmp)
            # metrics before the checkpoint's rename: a rerun skips a round whose checkpoint exists, so both or neither
            self.run.write_json(f"{round_folder(k)}.json", metrics)
            save_cost(self.run, fit_cost_file(k), cost)
        return value

    def measure_saved(self, k: int, records: Sequence[dict[str, Any]], prompts: Sequence[Prompt]) -> None:
        """Add `proxy_agreement` to a saved round's metrics that lack it (a round fitted by an earlier version):
        the round's rollouts scored (their candidates carry their rewards) and labelled, the metrics file
        rewritten in place."""
        name = f"{round_folder(k)}.json"
        if self.labeller is None or not self.run.has(name):
            return
        metrics = self.run.read_json(name)
        if "heldout_reward_judge_spearman" in metrics:
            return
        found = proxy_agreement(self.scored(records, prompts), self.cfg.seed)
        if found:
            self.run.write_json(name, {**metrics, **found})

    def fit(
        self,
        prompts: Sequence[Prompt],
        rollouts0: Sequence[dict[str, Any]] | None = None,
        scored0: Rollouts | None = None,
    ) -> ImprovedPolicy:
        """Run every round on the training prompts; `rollouts0` / `scored0` reuse round 0's rollouts (and their
        scores and states) when the caller already has them."""
        for k in range(len(self.values), self.cfg.spi.rounds):
            if k == 0:
                records = list(rollouts0) if rollouts0 is not None else self.rollouts(0, prompts)
                self.values.append(self.fit_round(0, records, prompts, scored0))
                continue
            self.values.append(self.fit_round(k, self.rollouts(k, prompts), prompts))
        return self.improved()
