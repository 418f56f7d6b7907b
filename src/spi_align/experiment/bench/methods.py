"""What `spi bench` times: a plain sampling loop, best-of-(W·K), and SPI search guided by 1..R rounds of heads.

The heads are randomly initialised on the policy's hidden states: the bench measures cost, and a head's cost does
not depend on its weights. All methods share one policy and one reward scorer. A backend without hidden states
(vLLM), and every backend when several are compared, also times SPI guided by the reward on partial text
('spi-text'), which every backend can run (a reward tuned on the policy's top layers, `reward=<run>/reward_model`,
reads the partial rows on the policy's lower layers instead: `scoring/top_layers.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from spi_align.config import BenchConfig
from spi_align.core.interfaces import HiddenStatePolicy, Policy, Scorer
from spi_align.core.records import Cost, Prompt
from spi_align.core.rows import Rows
from spi_align.experiment.bench.timing import Runner
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.registry import spi_name
from spi_align.values import HeadStack, ValueHead
from spi_align.values.anchored import AnchoredGuide
from spi_align.values.heads import HeadKind
from spi_align.values.reward_guide import TextPartialReward

TEXT_GUIDED = "spi-text"
"""SPI guided by the reward on partial text: reads no hidden states, so every backend runs it."""
UNTRACED = "spi-1-untraced"
"""SPI-1 with its tree not recorded: the reference of the recording cost."""
ANCHORED = "spi-anchored"
"""SPI-1 guided as the default recipe is: a reward head and a round's head on the end-token peek's state."""


def method_keys(cfg: BenchConfig, with_value_model: bool = False, hidden_states: bool = True) -> dict[str, str]:
    """Roles → method keys: 'sample' (P4's reference loop, when timed), 'bon', 'spi-1'..'spi-R' (when the policy
    exposes hidden states; every SPI method records its tree), 'spi-1-untraced' (SPI-1 recording nothing, when
    timed) and 'spi-anchored' (SPI-1 guided as the default recipe is, when timed), 'spi-text' (without hidden
    states, or when other backends are compared), and 'spi-vm' (SPI guided by a separate value model) when it is
    timed."""
    n = cfg.spi.candidates  # W·K per prompt for every method (compute-matched)
    keys = {"sample": f"sample-{n}"} if cfg.bench.plain_loop else {}
    keys["bon"] = f"bon-{n}"
    if hidden_states:
        keys.update({f"spi-{k}": f"spi-{k}" for k in range(1, cfg.spi.rounds + 1)})
        if cfg.bench.untraced:
            keys[UNTRACED] = UNTRACED
        if cfg.bench.anchored:
            keys[ANCHORED] = ANCHORED
    if not hidden_states or cfg.bench.backends:
        keys[TEXT_GUIDED] = TEXT_GUIDED
    if with_value_model:
        keys["spi-vm"] = "spi-vm"
    return keys


def on_hidden(stack: HeadStack, policy: HiddenStatePolicy) -> Callable[[Rows], torch.Tensor]:
    """The guidance of a head stack: its value of each row's last hidden state."""

    def value(rows: Rows) -> torch.Tensor:
        return stack(policy.last_hidden(rows))

    return value


def random_heads(hidden_size: int, rounds: int, kind: HeadKind, seed: int) -> list[ValueHead]:
    """`rounds` randomly initialised value heads (seeded), one per round."""
    heads = []
    for i in range(rounds):
        torch.manual_seed(seed + 1000 + i)
        heads.append(ValueHead(hidden_size, kind).eval())
    return heads


def guidance(heads: Sequence[ValueHead], cfg: BenchConfig, device: torch.device) -> HeadStack:
    """Σ_i γ V_i/β_i over `heads`, as `spi run` builds it."""
    weights = [cfg.spi.gamma / cfg.spi.beta(i) for i in range(len(heads))]
    return HeadStack(list(heads), weights).to(device)


def anchored_guide(policy: HiddenStatePolicy, head: ValueHead, cfg: BenchConfig) -> AnchoredGuide:
    """The default recipe's guidance of round 1 with random weights: R_t from a reward head (a seeded random linear
    layer) plus α · u(e_t) from `head`, both on the state after the end-token peek (α = 1 at every length)."""
    torch.manual_seed(cfg.seed + 2000)
    anchor = torch.nn.Linear(policy.hidden_size, 1).to(policy.device).eval()
    return AnchoredGuide(policy, anchor, [head], [cfg.spi.gamma / cfg.spi.beta(0)])


class SampleLoop:
    """A plain batched sampling loop: `policy.sample` with W·K samples per prompt, nothing decoded or scored."""

    def __init__(self, policy: Policy, n: int) -> None:
        self.policy, self.n = policy, n

    def __call__(self, prompts: Sequence[Prompt], cost: Cost) -> None:
        self.policy.sample(prompts, self.n, cost)


def build_methods(policy: Policy, reward: Scorer, cfg: BenchConfig) -> dict[str, Runner]:
    """Method key → runner, in the order of `method_keys`."""
    spi, n = cfg.spi, cfg.spi.candidates
    keys = method_keys(cfg, hidden_states=policy.has_hidden_states)
    methods: dict[str, Runner] = {}
    if "sample" in keys:
        methods[keys["sample"]] = SampleLoop(policy, n)
    methods[keys["bon"]] = BestOfN(policy, reward, n).run
    if isinstance(policy, HiddenStatePolicy):
        heads = random_heads(policy.hidden_size, cfg.spi.rounds, cfg.spi.head, cfg.seed)
        for k in range(1, cfg.spi.rounds + 1):
            stack = guidance(heads[:k], cfg, policy.device)
            search = ChunkBeamSearch.from_config(policy, on_hidden(stack, policy), reward, spi, spi_name(k))
            methods[keys[f"spi-{k}"]] = search.run
            if k == 1 and UNTRACED in keys:
                untraced = ChunkBeamSearch.from_config(policy, on_hidden(stack, policy), reward, spi, UNTRACED)
                untraced.trace = False
                methods[UNTRACED] = untraced.run
        if ANCHORED in keys:
            search = ChunkBeamSearch.from_config(policy, anchored_guide(policy, heads[0], cfg), reward, spi, ANCHORED)
            methods[ANCHORED] = search.run
    if TEXT_GUIDED in keys:  # a reward tuned on the policy's top layers reads partial rows its own way
        partial = reward.partial_value() if hasattr(reward, "partial_value") else TextPartialReward(reward, policy)
        text = ChunkBeamSearch.from_config(policy, partial, reward, spi, TEXT_GUIDED)
        methods[TEXT_GUIDED] = text.run
    return methods


def backend_methods(backend: str, policy: Policy, reward: Scorer, cfg: BenchConfig) -> dict[str, Runner]:
    """What another backend is timed on: the methods every backend runs (sampling loop, best-of-N, 'spi-text') and,
    where that backend reads the policy's hidden states, SPI-1 guided by value heads on them and as the default
    recipe guides it ('spi-anchored'); keyed
    'BACKEND:method'."""
    methods = build_methods(policy, reward, cfg)
    kept = {TEXT_GUIDED, "spi-1", ANCHORED}
    return {f"{backend}:{k}": r for k, r in methods.items() if not k.startswith("spi-") or k in kept}
