"""`spi run`: the experiment around Algorithm 1 — reward model, `SuccessivePolicyIteration.fit`, evaluation, report.

1. round-0 rollouts on the training prompts (plain samples of the base policy, or a sampling tree: `spi.tree`);
2. the reward: a configured scorer, or (`reward: train`) a Bradley–Terry reward model trained on those rollouts'
   pairs labelled by the evaluator: a head on the policy's states, or (`reward_model.layers` > 0) the top layers too
   (`experiment/tune_reward.py`, also launchable over GPUs); either is saved as a transformers reward model;
3. `SuccessivePolicyIteration(...).fit(train_prompts)`: V_0 .. V_{K-1} (`spi.py`);
4. every method of the registry that this run offers (sample, bon-N, spi-1..spi-K, enabled baselines, SPI at the
   compute frontier's budgets) on the eval prompts, judged by the held-out evaluator;
5. with `frontier.enabled`, the compute frontier (`experiment/frontier.py`): best-of-N at every N from one set of
   n samples per prompt, the SPI points, SPI's recorded training cost and the break-even query count;
6. `report.md`, `results.json` and a plot (with the frontier: `frontier.json` and `frontier.png` too).

Every step writes its artefacts into the run directory as soon as it finishes (atomically), and is skipped
when they are already there, so rerunning the same command resumes after the last finished step. A checkpoint's
metrics are written before its folder is renamed into place, so a step that counts as done has both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spi_align.config import Config, DataConfig
from spi_align.core.interfaces import Scorer, hidden_state_policy
from spi_align.core.records import Cost, Prompt
from spi_align.data.prompts import load_prompts
from spi_align.experiment.baselines import Baselines
from spi_align.experiment.frontier import compute_frontier
from spi_align.experiment.pipeline import evaluate
from spi_align.experiment.report import write_report
from spi_align.policy import load_policy
from spi_align.runs.resumable import run_method, save_cost
from spi_align.runs.rundir import RunDir
from spi_align.scoring import make_scorer
from spi_align.scoring.finite import finite_scores
from spi_align.scoring.reward_model import head_values, reading_pad_id
from spi_align.scoring.train_reward import preference_pairs, train_reward_head_on_states
from spi_align.search.registry import build_method, method_names
from spi_align.spi import (
    REWARD_COST,
    REWARD_DIR,
    STATES_COST,
    STATES_DIR,
    SuccessivePolicyIteration,
    load_reward,
    round_folder,
)
from spi_align.values.kinds import Rollouts

log = logging.getLogger(__name__)


class SPIRun:
    """The state of one `spi run`: policy, scorers, prompts, Algorithm 1, and the run directory."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir, cfg.name or default_name(cfg))
        self.run.start(cfg)
        self.eval_prompts = load_prompts(cfg.data)
        train_source = cfg.data.train_prompts or cfg.data.prompts
        train_cfg = DataConfig(prompts=train_source, split="train", limit=cfg.spi.train_prompts)
        self.train_prompts = load_prompts(train_cfg)
        self.policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
        self.device = str(self.policy.device)
        self.evaluator: Scorer = make_scorer(cfg.evaluator, device=self.device, dtype=cfg.policy.dtype)
        # every scorer is checked and loaded before anything is sampled: a wrong spec fails here, not after round 0
        self.reward: Scorer | None = None if cfg.reward == "train" else load_reward(cfg, self.run.path, self.policy)
        if cfg.reward == "train":  # what training the reward model will need, checked before sampling too
            from spi_align.train.reward_trainer import check_layers

            check_layers(cfg.policy.model, cfg.reward_model.layers)
            reading_pad_id(self.policy.tokenizer)
        self._preferences: tuple[list[Prompt], list[str], list[float], list[tuple[int, int]]] | None = None

    def method(self, key: str, search: Any, prompts: list[Prompt]) -> tuple[list[dict[str, Any]], Cost]:
        reseed = getattr(search, "policy", self.policy).reseed  # baselines may sample another policy
        return run_method(self.run, key, search, prompts, self.cfg.data.batch_size, reseed, self.cfg.seed)

    def round0_states(self, rollouts0: list[dict[str, Any]]) -> tuple[list[Prompt], list[list[int]], list[Any]]:
        """Round 0's rollouts with their prefix states (at the search's decision lengths when the value kind reads
        them, else only at the end): one teacher-forced pass, saved in the run, shared by the reward model and V_0."""
        from spi_align.values.anchored import decision_lengths
        from spi_align.values.prefix_states import STATES_FILE, load_states, prefix_states, save_states
        from spi_align.values.round import flatten_rollouts

        prompts, tokens, _ = flatten_rollouts(rollouts0, {p.id: p for p in self.train_prompts})
        name = STATES_DIR
        if self.run.has(f"{name}/{STATES_FILE}"):
            return prompts, tokens, load_states(self.run.file(name))
        spi = self.cfg.spi
        lengths = decision_lengths(spi.chunk, self.cfg.generation.max_new_tokens) if spi.value == "anchored" else []
        log.info("prefix states of %d round-0 rollouts at lengths %s and their ends", len(tokens), lengths)
        cost = Cost()
        with cost.timer("prefix_states"):
            states = prefix_states(self.policy, prompts, tokens, lengths)
        with self.run.folder(name) as tmp:
            save_states(states, tmp)
            save_cost(self.run, STATES_COST, cost)  # training compute, with its checkpoint
        return prompts, tokens, states

    def obtain_reward(self, rollouts0: list[dict[str, Any]], fit_v0: bool = True) -> tuple[Scorer, Rollouts | None]:
        """The configured scorer, or (reward: train) the reward model trained once, by Bradley–Terry on the pairs of
        `round0_preferences` (by default every ordered pair of each training prompt's round-0 samples labelled by the
        evaluator; DPO tunes on the same), saved as a transformers reward model in `reward_model/`; then loaded.
        With a trained head round 0's rollouts come back scored from their states (no re-encoding) for V_0's fit;
        with the head trained and V_0 saved (`fit_v0` false) nothing reads them, and round 0's prefix states are not
        computed again (a run folder carried without them, e.g. `results/snapshot.py`'s pack, resumes at once)."""
        if self.reward is not None:
            return self.reward, self.measured_reward(rollouts0)
        if self.cfg.reward_model.layers > 0:
            return self.tuned_reward(rollouts0), None
        if not fit_v0 and self.run.has(f"{REWARD_DIR}/config.json"):
            return load_reward(self.cfg, self.run.path, self.policy), None
        prompts, tokens, states = self.round0_states(rollouts0)
        ends = torch.stack([s.closed[-1] for s in states])
        if not self.run.has(f"{REWARD_DIR}/config.json"):
            from spi_align.scoring.reward_model import RewardModel, save_trained_reward

            _, _, labels, pairs = self.round0_preferences(rollouts0)
            log.info("training the reward model (Bradley–Terry on %d pairs labelled by the evaluator)", len(pairs))
            hidden = hidden_state_policy(self.policy, "reward: train (a reward head on the policy's states)")
            model = RewardModel(hidden.backbone, self.policy.tokenizer, source=self.cfg.policy.model)
            groups = [p.id for p in prompts]
            cost = Cost()
            with cost.timer("fit"):
                metrics = train_reward_head_on_states(
                    model, ends, groups, labels, self.cfg.reward_model, self.cfg.seed, pairs
                )
            with self.run.folder(REWARD_DIR) as tmp:
                save_trained_reward(model, tmp)
                self.run.write_json("reward_model.json", metrics)  # before the checkpoint counts as done
                save_cost(self.run, REWARD_COST, cost)
        reward = load_reward(self.cfg, self.run.path, self.policy)
        head = reward.model.head  # type: ignore[attr-defined]
        with torch.no_grad():
            rewards = head_values(head, ends).tolist()
        return reward, Rollouts(prompts, tokens, rewards, states)

    def measured_reward(self, rollouts0: list[dict[str, Any]]) -> Rollouts | None:
        """Round 0's samples scored by the configured (not trained) reward, and how it agrees with the evaluator on
        them (`ranking.agreement`, written once to `reward_model.json`: the run fitted no reward, so every training
        prompt is held out from it); None when `reward_model.measure` is off or the figures are already written.

        A reward head on this policy's own backbone (e.g. `reward: default`) reads the samples' end states (the
        prefix states the values share); any other reward scores their text once, and the scores are handed on to
        V_0's fit, so measuring costs only the evaluator's labels."""
        from spi_align.scoring.ranking import agreement
        from spi_align.scoring.row_reward import PolicyHeadReward
        from spi_align.values.round import flatten_rollouts

        if not self.cfg.reward_model.measure or self.run.has("reward_model.json") or self.reward is None:
            return None
        prompts, texts, labels, _ = self.round0_preferences(rollouts0)
        states = None
        if isinstance(self.reward, PolicyHeadReward) and self.reward.from_rows:
            prompts, tokens, states = self.round0_states(rollouts0)
            ends = torch.stack([s.closed[-1] for s in states])
            with torch.no_grad():
                rewards = head_values(self.reward.model.head, ends).tolist()
        else:
            _, tokens, _ = flatten_rollouts(rollouts0, {p.id: p for p in self.train_prompts})
            rewards = finite_scores(self.reward, self.reward.score(prompts, texts), texts)
        found = agreement(rewards, labels, [p.id for p in prompts])
        metrics = {
            "reward": self.cfg.reward,
            "measured_on": "round-0 samples of every training prompt (this run fitted no reward on them)",
            **{f"heldout_{k}": v for k, v in found.items() if k not in ("spearman", "pairs")},
            "heldout_pairs": found["pairs"],
            "heldout_spearman_with_labeller": found["spearman"],
        }
        self.run.write_json("reward_model.json", metrics)
        return Rollouts(prompts, [list(t) for t in tokens], rewards, states)

    def tuned_reward(self, rollouts0: list[dict[str, Any]]) -> Scorer:
        """The reward model with its top `reward_model.layers` layers tuned on `round0_preferences`' pairs (once: the
        pairs are written first, so the step can also run on its own, `experiment/tune_reward.py`), then loaded."""
        from spi_align.experiment.tune_reward import PAIRS_FILE, launch_command, tune_into_run
        from spi_align.train.reward_trainer import RewardPairs

        if not self.run.has(f"{REWARD_DIR}/config.json"):
            data = RewardPairs(*self.round0_preferences(rollouts0))
            self.run.write_json(PAIRS_FILE, data.to_dict())
            log.info(
                "tuning the reward model's top %d layers on %d pairs labelled by the evaluator (to spread it over "
                "GPUs instead: stop, run `%s`, then rerun this command)",
                self.cfg.reward_model.layers, len(data.pairs), launch_command(self.run),
            )  # fmt: skip
            cost = Cost()
            with cost.timer("fit"):
                tune_into_run(self.run, self.cfg, data)
            save_cost(self.run, REWARD_COST, cost)  # seconds only: the tuning's own forwards are not counted
        return load_reward(self.cfg, self.run.path, self.policy)

    def round0_preferences(
        self, rollouts0: list[dict[str, Any]]
    ) -> tuple[list[Prompt], list[str], list[float], list[tuple[int, int]]]:
        """Round 0's samples (`flatten_rollouts` order, as `round0_states`), their texts, the evaluator's labels and
        the (chosen, rejected) sample pairs built from them once (`preference_pairs`): the one pair list that the
        reward model (reward: train) and the DPO baseline both train on."""
        if self._preferences is None:
            from spi_align.values.round import flatten_rollouts

            prompts, tokens, _ = flatten_rollouts(rollouts0, {p.id: p for p in self.train_prompts})
            texts = self.policy.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            labels = finite_scores(self.evaluator, self.evaluator.score(prompts, texts), texts)
            pairs = preference_pairs([p.id for p in prompts], labels, self.cfg.reward_model.pairs_per_prompt)
            self._preferences = (prompts, texts, labels, pairs)
        return self._preferences

    def preference_pairs(self, rollouts0: list[dict[str, Any]]) -> list[tuple[Prompt, str, str]]:
        """(prompt, chosen, rejected) texts of `round0_preferences`' pairs: what the DPO baseline tunes on, the very
        pairs the reward model is fitted on."""
        prompts, texts, _, pairs = self.round0_preferences(rollouts0)
        return [(prompts[a], texts[a], texts[b]) for a, b in pairs]

    def execute(self) -> str:
        cfg = self.cfg
        algorithm = SuccessivePolicyIteration(self.policy, None, cfg, self.run)
        algorithm.labeller = ReusedLabels(self.evaluator, lambda: self._preferences)  # V_k ranked by the judge too
        rollouts0 = algorithm.rollouts(0, self.train_prompts)  # needs no reward yet
        reward, scored0 = self.obtain_reward(rollouts0, not algorithm.kind.saved(self.run.file(round_folder(0))))
        algorithm.reward = reward
        improved = algorithm.fit(self.train_prompts, rollouts0, scored0)
        ctx = improved.context()
        ctx.extras["baselines"] = Baselines(
            cfg, self.run, self.policy, reward, lambda: self.preference_pairs(rollouts0)
        )
        if cfg.frontier.enabled:
            ctx.extras["frontier"] = cfg.frontier  # offers SPI at the frontier's budgets
        results: dict[str, dict[str, Any]] = {}
        for key in method_names(ctx):
            log.info("evaluating %s on %d eval prompts", key, len(self.eval_prompts))
            records, cost = self.method(f"eval-{key}", build_method(key, ctx), self.eval_prompts)
            results[key] = {
                "evaluator": evaluate(records, self.eval_prompts, self.evaluator),
                "reward": evaluate(records, self.eval_prompts, reward),
                "cost": cost.to_dict(),
            }
        values = {
            k: self.run.read_json(f"{round_folder(k)}.json")
            for k in range(cfg.spi.rounds)
            if self.run.has(f"{round_folder(k)}.json")
        }
        sections = []
        if cfg.frontier.enabled:
            sections.append(
                compute_frontier(self.run, cfg, ctx, self.method, self.eval_prompts, self.evaluator, results)
            )
        report = write_report(self.run, cfg, results, values, baseline=f"bon-{ctx.candidates}", sections=sections)
        log.info("report: %s", self.run.file("report.md"))
        return report


class ReusedLabels:
    """The evaluator as the rounds' labeller (`SuccessivePolicyIteration.labeller`), reusing the labels that the
    run has read already for round 0's preferences (reward: train, the reward's measurement) instead of asking the
    evaluator again for the same (prompt, response)."""

    def __init__(self, evaluator: Scorer, known: Callable[[], Any]) -> None:
        self.evaluator, self.known = evaluator, known
        self.name = evaluator.name

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        read = self.known()
        known = {} if read is None else {(p.id, t): y for p, t, y in zip(read[0], read[1], read[2], strict=True)}
        todo = [i for i, (p, r) in enumerate(zip(prompts, responses, strict=True)) if (p.id, r) not in known]
        asked = self.evaluator.score([prompts[i] for i in todo], [responses[i] for i in todo]) if todo else []
        found = dict(zip(todo, asked, strict=True))
        pairs = enumerate(zip(prompts, responses, strict=True))
        return [found[i] if i in found else known[(p.id, r)] for i, (p, r) in pairs]


def default_name(cfg: Config) -> str:
    s = cfg.spi
    return f"spi-{Path(cfg.policy.model).name}-w{s.width}k{s.successors}l{s.chunk}-r{s.rounds}-seed{cfg.seed}"


def spi_run(cfg: Config) -> str:
    experiment = SPIRun(cfg)
    try:
        return experiment.execute()
    finally:
        experiment.run.close()  # the run folder's lock goes as soon as the run ends, not when it is collected
