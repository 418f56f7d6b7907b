"""`spi run`: Algorithm 1 end to end — rollouts, reward model, value functions round by round, evaluation.

Every step writes its artefacts into the run directory as soon as it finishes (atomically), and is skipped
when they are already there, so rerunning the same command resumes after the last finished step.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

from spi_align.config import Config, DataConfig
from spi_align.data import load_prompts
from spi_align.experiment.baselines import Baselines
from spi_align.experiment.pipeline import evaluate, run_method
from spi_align.experiment.report import write_report
from spi_align.experiment.rundir import RunDir
from spi_align.interfaces import Cost, Prompt, Scorer
from spi_align.policy import HFPolicy, load_policy
from spi_align.scoring import make_scorer
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.row_reward import PolicyHeadReward
from spi_align.scoring.train_reward import make_pairs, train_reward_head
from spi_align.search import BestOfN, PlainSampling
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.reward_guide import RewardPrefixValue, with_reward_prefix
from spi_align.values import HeadStack, ValueHead
from spi_align.values.guide import ValueModelGuide
from spi_align.values.model import ValueModel
from spi_align.values.model_round import load_value_model, new_value_model, train_value_model_round
from spi_align.values.round import flatten_rollouts, train_value

console = Console()


class SPIRun:
    """The state of one `spi run`: policy, scorers, prompts, trained heads, and the run directory."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir, cfg.name or default_name(cfg))
        self.run.start(cfg)
        self.eval_prompts = load_prompts(cfg.data)
        train_source = cfg.data.train_prompts or cfg.data.prompts
        train_cfg = DataConfig(prompts=train_source, split="train", limit=cfg.spi.train_prompts)
        self.train_prompts = load_prompts(train_cfg)
        self.policy: HFPolicy = load_policy(cfg.policy, cfg.generation, cfg.seed)
        self.device = str(self.policy.device)
        self.evaluator: Scorer = make_scorer(cfg.evaluator, device=self.device)
        self.reward: Scorer | None = None
        self._pairs: list[tuple[Prompt, str, str]] | None = None
        self.heads: list[ValueHead] = []
        self.value_models: list[ValueModel] = []

    # --- searches -------------------------------------------------------------------------------------------
    def guided(self, rounds: int, name: str) -> ChunkBeamSearch:
        """π_rounds: beam search guided by Σ_{i<rounds} γ V_i/β_i."""
        spi = self.cfg.spi
        weights = [spi.gamma / spi.beta(i) for i in range(rounds)]
        if spi.value == "model":
            value: Any = ValueModelGuide(self.value_models[:rounds], weights, self.policy.tokenizer)
        else:
            stack = HeadStack(self.heads[:rounds], weights).to(self.device)
            value = lambda rows: stack(rows.hidden)  # noqa: E731
        if spi.reward_guide > 0:
            value = with_reward_prefix(value, RewardPrefixValue(self.reward), spi.reward_guide)
        return ChunkBeamSearch.from_config(self.policy, value, self.reward, spi, name)

    def method(self, key: str, search: Any, prompts: list[Prompt]) -> tuple[list[dict[str, Any]], Cost]:
        reseed = getattr(search, "policy", self.policy).reseed  # baselines may sample another policy
        return run_method(self.run, key, search, prompts, self.cfg.data.batch_size, reseed, self.cfg.seed)

    # --- Algorithm 1 ----------------------------------------------------------------------------------------
    def rollouts(self, k: int) -> list[dict[str, Any]]:
        search = PlainSampling(self.policy, self.cfg.spi.rollouts) if k == 0 else self.guided(k, f"spi-{k}")
        console.print(f"[bold]round {k}[/]: rollouts on {len(self.train_prompts)} training prompts")
        records, _ = self.method(f"rollouts-{k}", search, self.train_prompts)
        return records

    def obtain_reward(self, rollouts0: list[dict[str, Any]]) -> Scorer:
        if self.cfg.reward != "train":
            return make_scorer(self.cfg.reward, device=self.device)
        folder = self.run.file("reward_model")
        if (folder / "spi_reward.json").exists():
            model = RewardModel.load(folder, device=self.device, backbone=self.policy.backbone)
        else:
            console.print("training the reward model (Bradley–Terry, pairs labelled by the evaluator)")
            model = RewardModel(self.policy.backbone, self.policy.tokenizer, source=self.cfg.policy.model)
            metrics = train_reward_head(model, self.preference_pairs(rollouts0), self.cfg.reward_model, self.cfg.seed)
            _save_atomically(folder, lambda tmp: model.save(tmp, with_backbone=False))
            self.run.write_json("reward_model.json", metrics)
        return PolicyHeadReward(model, self.policy)

    def preference_pairs(self, rollouts0: list[dict[str, Any]]) -> list[tuple[Prompt, str, str]]:
        """Round-0 samples of the training prompts labelled by the evaluator, best vs worst: what the reward model
        and the DPO baseline train on."""
        if self._pairs is None:
            by_id = {p.id: p for p in self.train_prompts}
            prompts = [by_id[r["id"]] for r in rollouts0]
            cands = [[c["text"] for c in r["candidates"]] for r in rollouts0]
            self._pairs = make_pairs(prompts, cands, self.evaluator, self.cfg.reward_model.pairs_per_prompt)
        return self._pairs

    def scored_rollouts(self, records: list[dict[str, Any]]) -> tuple[list[Prompt], list[list[int]], list[float]]:
        """Every candidate of the records with its reward (plain-sampling rollouts are scored here)."""
        by_id = {p.id: p for p in self.train_prompts}
        prompts, tokens, scores = flatten_rollouts(records, by_id)
        if any(s is None for s in scores):  # plain-sampling rollouts are not scored yet
            scores = self.reward.score(
                prompts, [self.policy.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
            )
        return prompts, tokens, scores

    def value_round(self, k: int, records: list[dict[str, Any]]) -> ValueHead:
        folder = self.run.file(f"values/round-{k}")
        if (folder / "value_head.json").exists():
            return ValueHead.load(folder)
        prompts, tokens, scores = self.scored_rollouts(records)
        console.print(f"round {k}: training V_{k} on {len(tokens)} rollouts")
        head, metrics = train_value(self.policy, prompts, tokens, scores, self.cfg.spi, self.cfg.seed)
        _save_atomically(folder, head.save)
        self.run.write_json(f"values/round-{k}.json", metrics)
        return head

    def value_model_round(self, k: int, records: list[dict[str, Any]]) -> ValueModel:
        """V_k as a separate value model (`spi.value: model`), saved under values/round-k/ or loaded from there."""
        spi, spec = self.cfg.spi, self.cfg.policy.model
        folder = self.run.file(f"values/round-{k}")
        if (folder / "value_model.json").exists():
            return load_value_model(folder, spi, self.policy, spec)
        prompts, tokens, scores = self.scored_rollouts(records)
        console.print(f"round {k}: training value model V_{k} on {len(tokens)} rollouts")
        model, metrics = train_value_model_round(
            lambda: new_value_model(spi, self.policy, spec), self.policy, prompts, tokens, scores, spi, self.cfg.seed
        )
        _save_atomically(folder, model.save)
        self.run.write_json(f"values/round-{k}.json", metrics)
        return model

    def execute(self) -> str:
        spi = self.cfg.spi
        rollouts0 = self.rollouts(0)
        self.reward = self.obtain_reward(rollouts0)
        for k in range(spi.rounds):
            records = rollouts0 if k == 0 else self.rollouts(k)
            if spi.value == "model":
                self.value_models.append(self.value_model_round(k, records))
            else:
                self.heads.append(self.value_round(k, records))
        n = spi.width * spi.successors
        methods: list[tuple[str, Any]] = [
            ("sample", PlainSampling(self.policy)),
            (f"bon-{n}", BestOfN(self.policy, self.reward, n)),
        ]
        methods += [(f"spi-{k}", self.guided(k, f"spi-{k}")) for k in range(1, spi.rounds + 1)]
        pairs = lambda: self.preference_pairs(rollouts0)  # noqa: E731
        methods += Baselines(self.cfg, self.run, self.policy, self.reward, pairs).methods()
        results: dict[str, dict[str, Any]] = {}
        for key, search in methods:
            console.print(f"evaluating {key} on {len(self.eval_prompts)} eval prompts")
            records, cost = self.method(f"eval-{key}", search, self.eval_prompts)
            results[key] = {
                "evaluator": evaluate(records, self.eval_prompts, self.evaluator),
                "reward": evaluate(records, self.eval_prompts, self.reward),
                "cost": cost.to_dict(),
            }
        values = {
            k: self.run.read_json(f"values/round-{k}.json")
            for k in range(spi.rounds)
            if self.run.has(f"values/round-{k}.json")
        }
        report = write_report(self.run, self.cfg, results, values, baseline=f"bon-{n}")
        console.print(Markdown(report))
        console.print(f"report: {self.run.file('report.md')}")
        return report


def default_name(cfg: Config) -> str:
    s = cfg.spi
    return f"spi-{Path(cfg.policy.model).name}-w{s.width}k{s.successors}l{s.chunk}-r{s.rounds}-seed{cfg.seed}"


def _save_atomically(folder: Path, save: Any) -> None:
    """Write a checkpoint folder next to its final place, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def spi_run(cfg: Config) -> str:
    return SPIRun(cfg).execute()
