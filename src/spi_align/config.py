"""Configuration: flat pydantic sections with a docstring per field, YAML files and `key=value` overrides.

Unknown keys are rejected; every error becomes one `SpiError` line naming the offending key (and the nearest known
keys). `describe_config` lists a resolved config's fields with their docstrings, section by section (`spi config`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spi_align.core.errors import SpiError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


ENGINE_FIXED = ("model", "runner", "convert", "pooler_config", "skip_tokenizer_init")
"""`vllm.LLM` arguments the vLLM backend sets itself on its engines (`policy.vllm.extra` and `state_engine`
cannot)."""


class VLLMConfig(Section):
    """vLLM's own engine settings for `policy.backend: vllm`, passed to `vllm.LLM` as they are (see vLLM's engine
    arguments). Several GPUs and several nodes are vLLM's tensor / pipeline / data parallelism (Ray across nodes)."""

    tensor_parallel_size: int = Field(1, gt=0)
    """GPUs each layer is split over (one node; the usual choice for a model too large for one GPU)."""
    pipeline_parallel_size: int = Field(1, gt=0)
    """Stages the layers are split into (across GPUs or nodes; combine with tensor parallelism)."""
    data_parallel_size: int = Field(1, gt=0)
    """Engine replicas. vLLM's offline engine supports more than 1 only under an external launcher (torchrun,
    `distributed_executor_backend: external_launcher`); otherwise run one process per prompt shard."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of each GPU's memory vLLM takes for weights, activations and the paged KV cache. The state engine
    (`hidden_states`) takes its own share on the same GPUs: lower this one or set its share in `state_engine`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    """Weights and activations dtype of the engine; None = `policy.dtype`. bfloat16 on GPUs."""
    max_model_len: int | None = Field(None, gt=0)
    """Longest prompt + response the engine plans its KV cache for; None = the model's context length."""
    enforce_eager: bool = False
    """Run the model eagerly: no CUDA graphs on GPUs, no compiled graphs on CPUs (there an engine then starts in about
    5 s instead of about 50 s, and decodes about 10-15% slower: worth it for short jobs)."""
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = None
    """How vLLM runs its workers: 'mp' (processes on one node), 'ray' (needed across nodes), 'uni' (one process),
    'external_launcher' (torchrun); None = vLLM's choice."""
    enable_prefix_caching: bool = True
    """Automatic prefix caching: a chunk re-reads the cached KV blocks of its prefix instead of re-encoding it."""
    block_size: int | None = Field(None, gt=0)
    """Tokens per KV-cache block; only whole blocks are shared between rows. None = vLLM's (16 on GPUs, 128 on
    CPUs, where it must be a multiple of 32), but 32 for the state engine on CPUs (a state read recomputes its
    prefix's last partial block)."""
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    """KV-cache size in bytes (overrides `gpu_memory_utilization`; on CPUs the cache's size)."""
    extra: dict[str, Any] = {}
    """Any other `vllm.LLM` / engine argument, passed as is (e.g. {quantization: fp8, max_num_seqs: 1024})."""
    hidden_states: bool = True
    """Expose the policy's hidden states (what value heads, anchored values and the reward head read): each row's
    last-token state and its state after the end-of-turn token come from a second engine on the same weights, vLLM's
    pooling runner (token pooling, no normalisation, prefix caching on: one request of prefix + end token gives
    both), started on the first read. Passes that run the policy's backbone on whole texts (round 0's teacher-forced
    prefix states, the reward head's text scores) use a transformers copy of the weights, loaded on first use.
    False: no states; guidance that reads them then refuses in one line."""
    state_engine: dict[str, Any] = {}
    """Engine arguments of that state engine that differ from the generation engine's (every setting above and
    `extra` go to both): e.g. {gpu_memory_utilization: 0.3} so that both engines fit on the GPUs, or
    {kv_cache_memory_bytes: 268435456} on CPUs. What makes it a state engine (model, runner, convert, pooler_config)
    is not settable."""

    @field_validator("extra", "state_engine")
    @classmethod
    def _roles_stay_fixed(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(set(value) & set(ENGINE_FIXED))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot be set here: the vLLM backend sets it on its engines")
        return value

    def engine_kwargs(self, default_dtype: str) -> dict[str, Any]:
        """Keyword arguments for `vllm.LLM`: every engine setting that is not None, then `extra`."""
        kwargs = self.model_dump(exclude={"extra", "hidden_states", "state_engine"}, exclude_none=True)
        kwargs["dtype"] = self.dtype or default_dtype
        return {**kwargs, **self.extra}

    def state_engine_kwargs(self, default_dtype: str) -> dict[str, Any]:
        """Keyword arguments for the state engine's `vllm.LLM`: `engine_kwargs`, then `state_engine`."""
        return {**self.engine_kwargs(default_dtype), **self.state_engine}


class PolicyConfig(Section):
    model: str = "default"
    """'default' (the embedded SmolLM2-135M-Instruct), 'gemma3-270m' (the optional embedded Gemma-3-270M base,
    fetched on first use or by `spi assets --fetch gemma3-270m`), a local model directory, or a hub id."""
    backend: Literal["hf", "vllm"] = "hf"
    """Which engine runs the policy: 'hf' (transformers) or 'vllm' (vLLM's offline engine with prefix caching: faster
    sampling, one or many GPUs; needs the `vllm` extra). Both expose hidden states, so value heads and the reward
    head on the policy work on either (vLLM's through a second, pooling engine: `vllm.hidden_states`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations dtype. float32 on CPU; bfloat16 on a GPU."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ... (hf backend; vLLM places itself)."""
    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template (when it has one)."""
    vllm: VLLMConfig = VLLMConfig()
    """Engine settings of `backend: vllm` (ignored by the hf backend)."""


class GenerationConfig(Section):
    max_new_tokens: int = Field(64, gt=0)
    """Longest response, in tokens."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature."""
    top_k: int = Field(50, ge=0)
    """Keep the k most likely tokens (0 = off)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1.0 = off)."""
    do_sample: bool = True
    """Sample; False = greedy decoding (temperature, top-k and top-p are then ignored)."""


class DataConfig(Section):
    prompts: str = "default"
    """'default' (the 805 AlpacaEval instructions) or a JSONL/JSON/CSV/parquet file with a prompt column."""
    split: Literal["train", "eval", "all"] = "eval"
    """For the default prompts: which side of the fixed seeded split (a file is used whole)."""
    train_prompts: str | None = None
    """Prompts for rollouts and the reward model in `spi run`: a file; 'default' for the training side of the default
    split; or None: the same as `prompts` (its training side when that is 'default')."""
    limit: int | None = Field(None, gt=0)
    """Use only the first `limit` prompts (None = all)."""
    batch_size: int = Field(8, gt=0)
    """Prompts searched together in one batch (each holds all its candidates)."""


class SearchConfig(Section):
    method: str = "best_of_n"
    """Which method `spi generate` runs: 'sample', 'best_of_n' (N = `n`), or any registered method name
    ('bon-8', and with `improved` set: 'spi-1' .. 'spi-K')."""
    n: int = Field(16, gt=0)
    """Samples per prompt for best-of-N."""
    improved: str | None = None
    """A saved SPI policy or finished `spi run` directory: its policy, reward and value functions are used, so
    its 'spi-k' methods can be generated (None = the base policy with `reward`)."""


class SPIConfig(Section):
    rounds: int = Field(2, ge=1)
    """Value functions to train; SPI-1..SPI-rounds are evaluated (SPI-k is guided by V_0..V_{k-1})."""
    width: int = Field(4, gt=0)
    """W: beams kept (parents) after each chunk."""
    successors: int = Field(4, gt=0)
    """K: chunks sampled from each parent; W·K candidates per step, compared with best-of-(W·K)."""
    chunk: int = Field(16, gt=0)
    """L: tokens per chunk."""
    selection: Literal["diversity", "diversity-parent", "top", "softmax"] = "diversity"
    """Next parents among each prompt's W·K candidates: 'diversity' (the paper's diversity-first top-W: identical
    responses form one cluster, and every cluster places its best candidate before any places a second; at L = 16
    exact duplicates are rare, so this is mostly top-W), 'diversity-parent' (diversity-first with the parent as the
    cluster: every parent places its best child before any parent places two; the first step, where every candidate
    continues the prompt, is top-W), 'top' (plain top-W), or 'softmax' (W drawn from softmax(value / temperature))."""
    temperature: float = Field(1.0, gt=0)
    """Temperature of the 'softmax' selection."""
    betas: list[Annotated[float, Field(gt=0)]] = Field([1.0], min_length=1)
    """β_i of each round's value function (the last one repeats); the paper's UltraFeedback run used [1, 2, 2.5]."""
    gamma: float = Field(1.0, gt=0)
    """γ in eq. 13: guidance = Σ_i γ V_i / β_i."""
    base_logprob: bool = False
    """Add log π_base of the partial response to the guidance (eq. 14); off as in the paper's Figure 3."""
    reward_guide: float = Field(0.0, ge=0)
    """Weight of the reward's score of each partial response, added to the guidance Σ_i γ V_i/β_i (0 = off): the
    reward as one more value function, with no training. A reward head on the policy's states (reward: train) reads
    the partial response closed with the end-of-turn token (one one-token forward per chunk); any other reward
    scores the decoded partial responses (one batched call per chunk)."""
    head: Literal["linear", "mlp"] = "linear"
    """Value head on the policy's last hidden state: closed-form ridge (linear) or a small MLP."""
    centered: bool = True
    """Regress on rewards centred per prompt: only differences between one prompt's candidates guide."""
    ridge: float = Field(10.0, ge=0)
    """L2 penalty of the linear head (on standardised features)."""
    rollouts: int = Field(8, gt=0)
    """Round 0: plain samples per training prompt when `tree` is []; a config that sets `rollouts` and not `tree`
    gets plain samples (later rounds keep every candidate their search finished)."""
    tree: list[Annotated[int, Field(gt=0)]] = [4, 2]
    """Round 0 as tree rollouts instead of `rollouts` independent samples: branch each live partial response into
    tree[j] continuations at the j-th chunk boundary (0, L, 2L, ...), then sample each leaf to the end; the default
    [4, 2] gives 8 leaves sharing 4 first chunks, for fewer tokens than 8 samples. Siblings share their prefix, so a
    prefix's target is the mean reward of its leaves (`values/anchored.py`). [] = `rollouts` independent samples."""
    draws: int | None = Field(None, gt=0)
    """Rounds k ≥ 1: how π_k is rolled out for V_k's data. None = the search as evaluated (W, K, L, selection),
    every candidate it finished kept: they share their first chunks and were already picked by the guidance, so
    within a prompt they differ little. A number = that many independent draws of π_k per training prompt
    (`search/draws.py`), each a one-beam search: K chunks sampled from the live spine, one drawn to go on with
    probability ∝ exp(guidance / `draw_temperature`) (eq. 13's π_k by sampling-importance-resampling), every
    candidate a draw finished kept (siblings that ended before a draw, unweighed, and the K siblings of its last
    chunk); draws part from their first chunk on. The same generated tokens as the W·K search at `draws` = W, and
    no more ranked prefixes per length (one per draw); what differs is that the spines are independent and drawn,
    not the top W."""
    draw_temperature: float = Field(1.0, gt=0)
    """With `draws` (ignored without): the temperature T of each draw's softmax over K successors. The guidance
    carries γ/β_i, so with `base_logprob` and `reward_guide` off T = 1 is eq. 13's reweighting of the sampler (at
    the generation settings) by exp(Σ_i γ V_i/β_i); → 0: the best by the guidance; large: a plain sample."""
    rank_weights: list[Annotated[float, Field(ge=0)]] = Field([0.0, 1.0], min_length=1)
    """For value=anchored: weights of the within-prompt ranking loss (pairwise logistic on V = R_t + u) beside
    eq. 12's squared error; the one that ranks best on the choice prompts (a split of the training prompts, never the
    held-out ones the ranking is reported on) is kept (0 = squared error only)."""
    per_depth: bool = True
    """For value=anchored: choose the weight α of the learned part separately at each decision length (L, 2L, ...)
    on the choice prompts (a split of the training prompts), instead of one α for all lengths."""
    train_prompts: int | None = Field(64, gt=0)
    """Training prompts used for rollouts and the reward model (None = the whole training split)."""
    value: Literal["heads", "model", "anchored"] = "anchored"
    """Value functions: 'anchored' (default): the reward on the partial response (a reward head on the state after
    the end token, or a text scorer on the decoded prefix) plus a linear head on that state fitted to the residual,
    kept only as far as it ranks better on the choice prompts; 'heads' on the frozen policy's own hidden states (free
    during the search); 'model': a separate value model per round (backbone + scalar head, fine-tuned by eq. 12,
    with its own KV cache; the one kind a backend without hidden states, vLLM, can train)."""
    value_backbone: str = "policy"
    """For value=model: start from the policy's weights ('policy'), from the run's reward model ('reward', the
    paper's recipe: V starts as the reward model read at every prefix, its score head included; a transformers
    reward model or reward: train), or from a model directory / hub id ('default' = the embedded SmolLM2,
    'gemma3-270m' = the embedded Gemma-3-270M), e.g. a smaller or other-family model (weak-to-strong)."""
    value_train_layers: int = Field(2, ge=-1)
    """For value=model: fine-tune the head and the backbone's last n layers (0 = head only, -1 = everything)."""
    value_epochs: int = Field(2, gt=0)
    """For value=model: passes over the round's rollouts."""
    value_lr: float = Field(1e-4, gt=0)
    """For value=model: AdamW learning rate of the backbone layers (the freshly initialised head uses 10×)."""
    value_batch_size: int = Field(8, gt=0)
    """For value=model: rollouts per training step (every response token of each is a regression target)."""

    @model_validator(mode="before")
    @classmethod
    def _rollouts_mean_plain_samples(cls, data: Any) -> Any:
        """A config that sets `rollouts` and not `tree` asks for that many plain samples: tree = []."""
        if isinstance(data, dict) and "rollouts" in data and "tree" not in data:
            return {**data, "tree": []}
        return data

    @property
    def round0_rollouts(self) -> int:
        """Round-0 rollouts per training prompt: at most the tree's leaves Π tree[j] (fewer when rows end before a
        branching, or the tree has more levels than chunks fit in max_new_tokens), or `rollouts` plain samples."""
        return math.prod(self.tree) if self.tree else self.rollouts

    @property
    def candidates(self) -> int:
        """W·K: candidates per prompt at every step of the search, and the N of the compute-matched best-of-N."""
        return self.width * self.successors

    def beta(self, round_index: int) -> float:
        return self.betas[min(round_index, len(self.betas) - 1)]


class RewardTrainConfig(Section):
    measure: bool = True
    """With a configured reward (not `train`): measure how it agrees with the evaluator on round 0's samples (pair
    accuracy and within-prompt Spearman, in `reward_model.json` and the report). The evaluator labels those samples
    once; the reward's scores of them are reused by V_0's fit."""
    pairs_per_prompt: int | None = Field(None, gt=0)
    """Preference pairs per training prompt, for the reward model and DPO alike (one pair list): None, every ordered
    pair of the prompt's round-0 samples whose labels differ; N, best vs worst, second best vs second worst, ... up
    to N pairs by the labeller."""
    epochs: int = Field(200, gt=0)
    """Full-batch Adam steps of the Bradley–Terry head."""
    lr: float = Field(0.01, gt=0)
    """Learning rate of the head."""
    weight_decay: list[Annotated[float, Field(ge=0)]] = Field([0.01, 0.1, 1.0], min_length=1)
    """L2 decay candidates of the head; the one with the best accuracy on the choice prompts' pairs (a split of the
    training prompts, never the held-out ones the accuracy is reported on) is used."""
    layers: int = Field(0, ge=0)
    """Transformer layers tuned with the head. 0: the head alone, on the policy's frozen states computed once (fast;
    the reward then reads the policy's own states, so a finished row costs no forward). n: the top n layers, the final
    norm and the head (started from the head fit), tuned by Bradley–Terry with transformers' `Trainer`
    (`train/reward_trainer.py`, which `accelerate launch` spreads over GPUs); the reward model then runs its own
    forward on every text it scores. More layers than the policy has is refused before anything is sampled."""
    tune_lr: list[Annotated[float, Field(gt=0)]] = Field([1e-5, 5e-5], min_length=1)
    """Learning-rate candidates when `layers` > 0; with `tune_weight_decay` and the number of epochs (1 ..
    `tune_epochs`), chosen by pair accuracy on the choice prompts."""
    tune_weight_decay: list[Annotated[float, Field(ge=0)]] = Field([0.0], min_length=1)
    """AdamW weight-decay candidates when `layers` > 0 (chosen with the learning rate)."""
    tune_epochs: int = Field(2, gt=0)
    """Most passes over the pairs when `layers` > 0; the number used is chosen on the choice prompts."""
    tune_batch_size: int = Field(8, gt=0)
    """Preference pairs per optimiser step and device when `layers` > 0."""


class BaselinesConfig(Section):
    """The paper's baselines, evaluated by `spi run` beside sampling, BoN-E and SPI at the same budgets."""

    dpo: bool = False
    """DPO (training-time): tune a copy of the policy on the preference pairs the reward model saw (training-split
    samples labelled by the evaluator); evaluate one plain sample per prompt from it ('dpo')."""
    bon_implicit: bool = False
    """BoN-I: best of W·K samples by the implicit reward log π_tuned − log π_ref ('bon-i-N')."""
    w2s: bool = False
    """Weak-to-strong search (Zhou et al. 2024): chunk beam search with spi's W, K, L, partial responses ranked by
    the implicit reward, which also picks the answer ('w2s')."""
    tuned: str | None = None
    """Tuned model of the implicit-reward pair (a directory or hub id); None = the DPO-tuned policy, trained in
    this run (whether or not 'dpo' itself is evaluated)."""
    reference: str | None = None
    """Reference model of the pair (sharing the tuned model's tokenizer); None = the frozen policy."""
    implicit_beta: float = Field(1.0, gt=0)
    """β of the implicit reward β(log π_tuned − log π_ref): scales it, never changes a ranking."""
    w2s_selection: Literal["top", "diversity"] = "top"
    """Next beams of weak-to-strong search: top-W as in Zhou et al. (2024), or diversity-first."""
    w2s_policy: str | None = None
    """The policy weak-to-strong search guides; None = the frozen policy. Another model (larger, or with another
    tokenizer: then partial responses are re-tokenised as text) is loaded with the policy settings and evaluated
    three ways at the same budget: 'strong-sample', 'strong-bon-N' (reward model) and 'strong-w2s'."""
    dpo_steps: int = Field(40, gt=0)
    """DPO optimiser steps."""
    dpo_batch_size: int = Field(4, gt=0)
    """Preference pairs per DPO step."""
    dpo_lr: float = Field(5e-6, gt=0)
    """DPO learning rate (constant)."""
    dpo_beta: float = Field(0.1, gt=0)
    """DPO's β: how far the tuned policy may move from the reference."""
    dpo_max_length: int = Field(512, gt=0)
    """Longest prompt + response in tokens for DPO training (longer pairs are cut)."""

    @property
    def implicit(self) -> bool:
        """Whether an implicit-reward pair is needed."""
        return self.bon_implicit or self.w2s


class FrontierConfig(Section):
    """The compute frontier of `spi run` (`experiment/frontier.py`): the judge score of best-of-N at every N and of
    SPI at several beam budgets, against generated tokens and forward tokens per prompt, SPI's training cost spread
    over the queries served, and the query count from which SPI costs no more than best-of-N of equal judge score."""

    enabled: bool = False
    """Measure the frontier in `spi run` (a table and JSON, `frontier.json`, in the report, and `frontier.png`)."""
    samples: int = Field(64, gt=0)
    """n: samples per eval prompt drawn once (the method 'bon-n', resumable like every method), each scored by the
    reward and by the evaluator once; every best-of-N of `sizes` is estimated from them."""
    sizes: list[Annotated[int, Field(gt=0)]] = []
    """The N of best-of-N on the frontier (each ≤ `samples`; [] = the powers of two up to `samples`: 1, 2, 4, ..., 64
    by default), each estimated over all N-subsets of the n samples by the unbiased subset estimator
    (`experiment/frontier_maths.py`), not from the first N samples."""
    budgets: list[Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=3, max_length=3)]] = Field(
        [[4, 4, 16], [2, 4, 16], [8, 4, 16]], min_length=1
    )
    """SPI's beam budgets [W, K, L] on the frontier; each is evaluated like the run's own SPI-k (method
    'spi-k-wWkKlL'; the run's own W, K, L is its 'spi-k', evaluated once)."""
    rounds: list[Annotated[int, Field(gt=0)]] = []
    """The SPI rounds k placed at every budget (each ≤ `spi.rounds`); [] = every trained round."""
    queries: list[Annotated[int, Field(gt=0)]] = Field([1_000, 100_000], min_length=1)
    """Query counts Q over which SPI's training cost is spread in the table and plot: per-query cost = search cost +
    training cost / Q."""

    @model_validator(mode="after")
    def _sizes_within_samples(self) -> FrontierConfig:
        over = [n for n in self.sizes if n > self.samples]
        if over:
            raise ValueError(f"best-of-{over[0]} needs at least {over[0]} samples (frontier.samples is {self.samples})")
        return self

    @property
    def bon_sizes(self) -> list[int]:
        """The N of best-of-N on the frontier, ascending, once each (`sizes`, or its default)."""
        if self.sizes:
            return sorted(set(self.sizes))
        return [2**i for i in range(self.samples.bit_length()) if 2**i <= self.samples]


class Config(Section):
    seed: int = 0
    """Seed for sampling and splits; the same seed gives the same run."""
    run_dir: str = "runs"
    """Folder under which each run gets its own directory."""
    name: str | None = None
    """Run name (default: derived from the command and its main settings)."""
    reward: str = "similarity"
    """Scorer that picks among candidates: 'similarity', 'sentiment', 'polarity', a reward model (a transformers
    sequence classifier with num_labels 1, as a folder or a hub id 'org/name', run on the policy's device and dtype;
    or a folder saved by spi's own reward model), 'module:function' (a Python callable taking (prompts, responses)
    and returning floats), or, for `spi run`, 'train': a reward model trained on training-split samples labelled by
    the evaluator."""
    evaluator: str = "similarity"
    """Held-out scorer that judges results (never used to pick): any scorer `reward` takes, except 'train'."""
    policy: PolicyConfig = PolicyConfig()
    """The frozen base policy."""
    generation: GenerationConfig = GenerationConfig()
    """Sampling settings."""
    data: DataConfig = DataConfig()
    """Which prompts."""
    search: SearchConfig = SearchConfig()
    """Which inference-time method."""
    spi: SPIConfig = SPIConfig()
    """Successive policy iterations: rounds, beam shape, value functions."""
    reward_model: RewardTrainConfig = RewardTrainConfig()
    """How `reward: train` trains its reward model (Bradley–Terry, on the policy's backbone: its head, or its top
    layers too)."""
    baselines: BaselinesConfig = BaselinesConfig()
    """Optional baselines for `spi run`: DPO, BoN-I, weak-to-strong search."""
    frontier: FrontierConfig = FrontierConfig()
    """The compute frontier for `spi run`: best-of-N at every N and SPI at several budgets, training cost included."""

    @model_validator(mode="after")
    def _frontier_rounds_trained(self) -> Config:
        over = [k for k in self.frontier.rounds if k > self.spi.rounds]
        if over:
            raise ValueError(f"frontier.rounds names SPI-{over[0]} but only {self.spi.rounds} rounds are trained")
        return self

    @model_validator(mode="after")
    def _value_from_a_reward_model(self) -> Config:
        text = self.reward in ("similarity", "sentiment", "polarity") or ":" in self.reward
        if self.spi.value == "model" and self.spi.value_backbone == "reward" and text:
            raise ValueError(
                f"spi.value_backbone=reward starts the value model from the reward model, but reward '{self.reward}' "
                "scores text: use a transformers reward model (hub id or folder), reward: train, or another backbone"
            )
        return self


class BenchOptions(Section):
    repeats: int = Field(3, gt=0)
    """Timed runs of every method; medians and min–max are over these (odd repeats run the methods in reverse)."""
    plain_loop: bool = True
    """Also time a plain batched sampling loop (`policy.sample`, W·K samples per prompt): P4's reference."""
    untraced: bool = True
    """Also time SPI-1 with its tree not recorded ('spi-1-untraced'): every SPI method records its tree as `spi run`
    does (`ChunkBeamSearch.trace`), and this row shows what recording costs (P1 is met with recording on)."""
    anchored: bool = True
    """Also time SPI-1 guided as the default recipe guides it ('spi-anchored'): anchored values, a reward head and a
    round's head on the state after an end-of-turn token fed to every row at each chunk (the end-token peek), with
    randomly initialised heads; where the policy exposes hidden states, on every backend timed."""
    warmup: bool = True
    """Run every method once on one prompt before timing (lazy initialisation and first allocations untimed)."""
    memory: bool = True
    """Measure the peak RSS of best-of-(W·K) and of SPI with the most rounds, each in a fresh subprocess."""
    value_model: bool = True
    """P2b/P3: also time SPI guided by a separate value model of the policy's size (a second copy of its backbone
    with a scalar head, sharing its tokenizer, on its own KV cache), and that value model alone on two lengths."""
    value_backbone: str = "policy"
    """P2b/P3's value model: 'policy' (a second copy of the policy's backbone, sharing its tokenizer), or another
    model ('default', a local directory, a hub id). One of another tokenizer reads the policy's text through its
    own tokenizer on its own KV cache (`hf/text_cache.py`): P2b then measures that case."""
    p3_lengths: list[Annotated[int, Field(gt=0)]] = Field([64, 256], min_length=2)
    """P3: response lengths (tokens) the value model alone is timed on; the ratio is longest / shortest."""
    backends: list[Literal["hf", "vllm"]] = []
    """Other policy backends timed in the same run beside `policy.backend` (same model, prompts, sizes and seed):
    plain sampling, best-of-(W·K) and SPI guided by the reward on partial text (what every backend can run), keyed
    'BACKEND:method'. E.g. [vllm] compares vLLM with transformers side by side."""


class BenchConfig(Section):
    """`spi bench`: the methods' cost, measured in one process. SPI-1..SPI-`spi.rounds` are timed, guided by
    randomly initialised `spi.head` heads (cost does not depend on the weights); best-of-N uses N = W·K."""

    seed: int = 0
    """Sampling seed; every timed run of every method starts from it."""
    run_dir: str = "runs"
    """Folder under which the bench gets its own directory."""
    name: str | None = None
    """Run name (default: 'bench')."""
    reward: str = "sentiment"
    """Scorer that picks among candidates (as in `Config.reward`, except 'train')."""
    policy: PolicyConfig = PolicyConfig()
    """The frozen base policy."""
    generation: GenerationConfig = GenerationConfig()
    """Sampling settings; `max_new_tokens` is every method's response length."""
    data: DataConfig = DataConfig()
    """Which prompts (`limit` of them), searched `batch_size` at a time."""
    spi: SPIConfig = SPIConfig()
    """Beam shape (width, successors, chunk, selection), rounds timed and head kind."""
    bench: BenchOptions = BenchOptions()
    """Repeats, and what else to measure."""


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SpiError(f"config: cannot set '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Turn ['search.n=8', 'seed=1'] into a nested dict; values are parsed as YAML (numbers, lists, ...).

    With `model`, each key is checked against its fields: a key below a field that is not a section is one clear
    error, and a text field keeps the text as written where YAML would read another type (`name=2024` is the name
    '2024', `name=yes` the name 'yes').
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpiError(f"config: override '{item}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        annotation = field_annotation(model, key) if model is not None else None
        if value is not None and not isinstance(value, str) and _is_text(annotation):
            value = raw.strip()
        set_dotted(tree, key, value)
    return tree


def field_annotation(model: type[BaseModel], dotted: str) -> Any:
    """The type of field `dotted` in `model` (None when unknown: validation names it); SpiError when a key goes
    below a field that is neither a section nor a mapping."""
    keys = dotted.split(".")
    for depth, key in enumerate(keys):
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        if depth == len(keys) - 1:
            return annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif get_origin(annotation) is dict or annotation is Any:
            return None  # free-form mapping: any key below it is allowed
        else:
            where = ".".join(keys[: depth + 1])
            raise SpiError(f"config: cannot set '{dotted}': '{where}' is not a section")
    return None


def _is_text(annotation: Any) -> bool:
    """True for `str` and `str | None` fields."""
    if annotation is str:
        return True
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    return str in args and all(a in (str, type(None)) for a in args)


def merge_trees(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def _explain(err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"config: unknown key '{where}'{did_you_mean(where, model)}"
    return f"config: {where}: {first['msg']}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpiError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpiError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpiError(f"config file {path} must hold a mapping of keys to values")
    return data


def build_config(
    model: type[Section],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Any:
    """Defaults, then the YAML file, then `key=value` overrides; validated into `model`."""
    tree = dict(defaults or {})
    if path is not None:
        tree = merge_trees(tree, read_yaml(path))
    tree = merge_trees(tree, parse_overrides(overrides or [], model))
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise SpiError(_explain(err, model)) from None


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that is a section of its own (policy, policy.vllm, ...), else None."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable key of `model` as a dotted path ('seed', 'spi.width', 'policy.vllm.dtype'), in field order."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        keys += dotted_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


def did_you_mean(key: str, model: type[BaseModel]) -> str:
    """'; did you mean spi.width?' naming the 1–3 known keys of `model` nearest to `key`, or '' when none is close.

    A key scores difflib's similarity ratio of the whole dotted key, or 0.85 × that of its last part (so a key in the
    wrong section, `temperature`, finds spi.temperature and generation.temperature); kept are those scoring at least
    0.6 and within 0.1 of the best.
    """
    leaf = key.rsplit(".", 1)[-1]

    def score(known: str) -> float:
        whole = difflib.SequenceMatcher(None, key, known).ratio()
        return max(whole, 0.85 * difflib.SequenceMatcher(None, leaf, known.rsplit(".", 1)[-1]).ratio())

    scores = {known: score(known) for known in dotted_keys(model)}
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)[:3]  # ties keep field order
    near = [known for known in ranked if scores[known] >= max(0.6, scores[ranked[0]] - 0.1)]
    return f"; did you mean {' or '.join(near)}?" if near else ""


@dataclass(frozen=True)
class FieldDoc:
    key: str
    """Dotted key, as an override names it ('spi.width')."""
    value: Any
    """The resolved value, as JSON would hold it."""
    doc: str
    """The field's docstring on one line ('' when it has none)."""


@dataclass(frozen=True)
class SectionDoc:
    name: str
    """Dotted section name ('policy.vllm'); '' for the top-level fields."""
    doc: str
    """The docstring of the field holding the section ('' for the top level)."""
    fields: list[FieldDoc]
    """The section's own settings (its sub-sections are separate `SectionDoc`s)."""


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def describe_config(config: BaseModel, name: str = "", doc: str = "") -> list[SectionDoc]:
    """`config`'s settings grouped by section, each with its resolved value and docstring: the top-level fields
    first, then every section in field order, a nested section (policy.vllm) right after its parent."""
    values = config.model_dump(mode="json")
    fields: list[FieldDoc] = []
    nested: list[SectionDoc] = []
    for field_name, field in type(config).model_fields.items():
        key = f"{name}.{field_name}" if name else field_name
        if _section_type(field.annotation):
            nested += describe_config(getattr(config, field_name), key, _one_line(field.description))
        else:
            fields.append(FieldDoc(key, values[field_name], _one_line(field.description)))
    return [SectionDoc(name, doc, fields), *nested]
