"""A reward model tuned on the policy's top layers, run on the policy's own lower layers: the search keeps
best-of-N's cost.

`reward: train` with `reward_model.layers` = N > 0 tunes the policy's top N layers, its final norm and a score layer
(`train/reward_trainer.py`); the L − N layers below are the policy's, unchanged. So the state such a classifier has
at the input of its layer L − N is, for every token, the state the policy's own backbone has there. The policy keeps
those states for the tokens it feeds (`HFPolicy.tap_layer`: a hook on its own forwards, no extra forward), and
`TopLayersReward` runs only its N layers on them, incrementally, on a KV cache of its own per row (a
`hf.side_cache.SideCache` in `Rows.extras`, reordered with the rows):

- finished rows (`score_rows`, the final pick): the rows' new tokens, and the end token fed to rows cut at
  max_new_tokens (`end_hidden`), through the N layers; the reward is read at each row's last token, its end token;
- partial responses (`partial_value`: R_t of anchored values and of `spi.reward_guide`): the same, then the end token
  of the policy's end-token peek (`peek_end_hidden`, shared with the value heads) on top, cropped back after.

Every token goes through the N layers once: each prompt once (before its rows fan out), each response token once,
and one end token per row and chunk for the peek. That is billed under "reward" as the N/L share of a forward (a
token through N of the L layers counts N/L of a token; the remainder is carried to the next forward), beside the
policy's own prefill, decode and peek, which stay what they are for best-of-N.

Texts (`score`) and rows the policy did not tap run the classifier whole: the policy's backbone stopped at layer
L − N (`hf.batches.LayerTap.below`: the layers above it never run), then the N tuned layers. Either way the rewards
are the classifier's: `TopLayersReward` is a `ClassifierReward` (its rendering, pad token and reading position) with
the shared layers underneath, and its scores equal the folder loaded on its own (`reward=<folder>`). The rows are
read where the classifier reads: its rendering closes a response with the policy's end token followed only by pad
tokens (`attach`'s tail), so it reads the end token's state. A response holding other special tokens (which text
decoding drops) is read as the policy fed it, as the reward head on the policy's states reads it
(`scoring/row_reward.py`).

It is used only when checked (`top_layers_reward`; otherwise None, and the caller loads the classifier whole): a
transformers policy (`HFPolicy`), the same model type and sizes, N recorded by the run (`reward_model.json`'s
`layers`) or else found from the weights (the top layers that differ from the policy's), the embeddings and the first
and last shared layers equal to the policy's tensor by tensor, and a layer stack that takes the states it is fed as
they are (some models scale their input embeddings inside the forward).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from spi_align.core.interfaces import Policy
from spi_align.core.records import Cost, billed
from spi_align.core.rows import Rows
from spi_align.hf.batches import BackboneRunner, LayerTap
from spi_align.hf.models import layer_stack
from spi_align.hf.side_cache import TAPPED, SideCache, TappedStates
from spi_align.policy.hf import HFPolicy
from spi_align.scoring.classifier import ClassifierReward, classifier_config
from spi_align.scoring.finite import finite_scores

log = logging.getLogger(__name__)

STATE = "top_layers_reward"
"""The key of a `TopLayersReward`'s own per-row cache in `Rows.extras`."""


class TopLayers(nn.Module):
    """The tuned top N layers and final norm (a backbone of N layers, fed hidden states) and the score layer; a
    `CachedEncoder` for `SideCache` that bills its real tokens under "reward" as N/L of a forward each."""

    def __init__(self, backbone: PreTrainedModel, score: nn.Linear, total_layers: int) -> None:
        super().__init__()
        self.backbone, self.score = backbone, score
        self.runner = BackboneRunner(backbone, embeds=True)
        self.layers = int(backbone.config.num_hidden_layers)
        self.total_layers = total_layers
        self.tokens = 0
        """Real tokens run through the N layers so far (unscaled)."""
        self._carry = 0

    def new_cache(self) -> Any:
        return self.runner.new_cache()

    def hidden(self, states: torch.Tensor, attention_mask: torch.Tensor, cache: Any | None = None) -> torch.Tensor:
        """The normed last-layer states (R, n, H) of the N layers on `states` (R, n, H), through `cache`."""
        fed = int(attention_mask[:, -states.shape[1] :].sum())
        self.tokens += fed
        cost = billed()
        if cost is not None:
            whole, self._carry = divmod(self._carry + fed * self.layers, self.total_layers)
            cost.count_forward("reward", whole)
        return self.runner.hidden(states.to(self.score.weight.dtype), attention_mask, cache)

    def rewards(self, hidden: torch.Tensor) -> torch.Tensor:
        """The score layer on normed states (..., H) → rewards (...) in fp32."""
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1).float()


class SharedClassifier(nn.Module):
    """The tuned classifier as `ClassifierReward` calls it (`model(input_ids=, attention_mask=).logits`, read at the
    last token that is not the pad token): the policy's backbone up to the tapped layer, then the tuned layers."""

    def __init__(self, policy_backbone: nn.Module, tap: LayerTap, top: TopLayers, config: Any) -> None:
        super().__init__()
        self.top, self.config, self.tap = top, config, tap
        self._lower = [policy_backbone]  # the policy's, not this module's own (no `.to()` or state dict touches it)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        backbone = self._lower[0]
        states = self.tap.below(lambda: backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
        hidden = self.top.runner.module(
            inputs_embeds=states.to(self.top.score.weight.dtype), attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        read = (torch.arange(input_ids.shape[1], device=input_ids.device) * (input_ids != self.pad_id)).argmax(-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return SimpleNamespace(logits=self.top.score(hidden[rows, read]))

    @property
    def pad_id(self) -> int:
        return int(self.config.get_text_config().pad_token_id)


class TopLayersPartialReward:
    """`value(rows) -> (R,)`: the tuned reward of each partial response closed with the end token (R_t)."""

    term = "R_partial"
    """Its name in a recorded trace's guidance terms."""

    def __init__(self, reward: TopLayersReward) -> None:
        self.reward = reward

    def __call__(self, rows: Rows) -> torch.Tensor:
        return self.reward.partial_rewards(rows)


class TopLayersReward(ClassifierReward):
    """A tuned reward model sharing the policy's lower layers (see the module docstring)."""

    def __init__(
        self, top: TopLayers, policy: HFPolicy, config: Any, tokenizer: Any, source: Path, name: str = ""
    ) -> None:
        self.tap = policy.tap_layer(top.total_layers - top.layers)
        shared = SharedClassifier(policy.backbone, self.tap, top, config)
        # a classifier in all that `ClassifierReward` asks of one: its config, `eval`, parameters and `(...).logits`
        super().__init__(cast("PreTrainedModel", shared), tokenizer, name=name)
        self.top, self.source, self.states_policy = top, source, policy
        self._peek: tuple[torch.Tensor, torch.Tensor] | None = None
        self.attach(policy)
        tail = self.tail or []
        self.reads_rows = bool(tail) and tail[0] == policy.end_id and all(t == self.pad_id for t in tail[1:])
        """Whether the classifier reads a row where the policy's rows end (at the end token); else rows are scored
        through `ClassifierReward.score_rows`, whole."""

    def partial_value(self) -> TopLayersPartialReward:
        """R_t during the search, as a value function (what `spi.reward_guide` and anchored values read)."""
        return TopLayersPartialReward(self)

    def _state(self, rows: Rows) -> SideCache | None:
        """The rows' cache of the N layers, fed every token the policy tapped since the last call (created on first
        use from the prompts' states, fanned out to the rows); None when the rows carry no states of this tap."""
        tapped = rows.extras.get(TAPPED)
        if not self.reads_rows or not isinstance(tapped, TappedStates) or tapped.source is not self.tap:
            return None
        state = rows.extras.get(STATE)
        if not isinstance(state, SideCache):
            if tapped.prompts is None:
                return None
            states, mask = tapped.take_prompts()
            cache = self.top.new_cache()
            last = self.top.hidden(states, mask, cache)[:, -1]
            state = SideCache([self.top], [cache], mask, torch.zeros_like(mask[:, 0]), [last])
            rows.extras[STATE] = state = state.select(rows.prompt_index)
        new = tapped.take()
        if new is not None:
            states, real = new
            state.feed_block(states, real, real.sum(1))
        return state

    @torch.no_grad()
    def score_rows(self, rows: Rows, index: torch.Tensor, cost: Cost) -> list[float] | None:
        """Rewards of the finished rows `index` (rows cut at max_new_tokens are fed the end token and end)."""
        if self._state(rows) is None:
            return super().score_rows(rows, index, cost)
        self.states_policy.end_hidden(rows, index, cost)
        state = self._state(rows)
        assert state is not None  # the rows carried this tap's states a moment ago
        return self.top.rewards(state.last[0][index]).tolist()

    @torch.no_grad()
    def partial_rewards(self, rows: Rows) -> torch.Tensor:
        """(R,) the reward of each row as if it ended now: its end-token peek through the N layers (rows that ended
        read their last token); the decoded texts, scored whole, for rows the policy did not tap."""
        state = self._state(rows)
        if state is None:
            texts = self.states_policy.texts(rows)
            prompts = [rows.prompts[i] for i in rows.prompt_index.tolist()]
            scores = finite_scores(self, self.score(prompts, texts), texts)
            return torch.tensor(scores, dtype=torch.float32, device=rows.length.device)
        self.states_policy.peek_end_hidden(rows)  # the policy's peek (shared with value heads) taps the end token
        tapped = rows.extras[TAPPED]
        assert isinstance(tapped, TappedStates)  # `_state` checked it
        last = state.last[0]
        if tapped.peeked is None:
            if not bool(rows.done.all()):
                raise RuntimeError("the policy peeked at unfinished rows without tapping the end token")
            return self.top.rewards(last)
        ends, need = tapped.peeked
        if self._peek is not None and self._peek[0] is ends:
            return self._peek[1]
        peeked = state.peek_block(ends[:, None], need[:, None])[0][:, 0]
        values = self.top.rewards(torch.where(need[:, None], peeked.to(last.dtype), last))
        self._peek = (ends, values)
        return values

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the reward model as it was loaded (its folder's files: a transformers classifier)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for path in Path(self.source).iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)


def recorded_layers(record: Path) -> int | None:
    """The tuned layers a run recorded in its `reward_model.json` (None: no record, or none recorded)."""
    try:
        layers = json.loads(record.read_text(encoding="utf-8")).get("layers")
    except (OSError, ValueError):
        return None
    return int(layers) if isinstance(layers, int) and layers > 0 else None


def top_layers_reward(folder: Path, policy: Policy, record: Path | None = None) -> TopLayersReward | None:
    """The tuned reward model in `folder` on `policy`'s lower layers, when the checks of the module docstring pass;
    None, with the reason logged, when they do not. N is the `layers` of `record` (the run's `reward_model.json`);
    without one (a folder saved by `ImprovedPolicy.save`), the top layers whose tensors differ from the policy's,
    counted down to the first equal one."""
    from transformers import AutoTokenizer

    _, config = classifier_config(str(folder))
    if not isinstance(policy, HFPolicy):
        log.info("reward model %s runs whole: the policy (%s) has no layers to share", folder, type(policy).__name__)
        return None
    top = None
    why = _other_model(config, policy)
    weights = _Weights(folder, policy.backbone) if why is None else None
    layers = recorded_layers(record) if record is not None else None
    if weights is not None and weights.prefix is None:
        why = "its weights do not name the policy's layers"
    elif weights is not None:
        layers = layers or _tuned_layers(weights, policy)
        why = _unshared(weights, policy, layers)
        if why is None and layers is not None and (top := _load_top(weights, policy, config, layers)) is None:
            why = "its top layers cannot be run on the policy's states"
    if top is None:
        log.info("reward model %s runs whole beside the policy: %s", folder, why)
        return None
    name = f"reward_model({Path(folder).name}, its top {layers} layers on the policy's)"
    reward = TopLayersReward(top, policy, config, AutoTokenizer.from_pretrained(folder), Path(folder), name=name)
    log.info("%s reads the policy's rows: %s", reward.name, "yes" if reward.reads_rows else "no (text only)")
    return reward


def _other_model(config: Any, policy: HFPolicy) -> str | None:
    """How the classifier's architecture differs from the policy's, or None."""
    mine, theirs = config.get_text_config(), policy.model.config.get_text_config()
    for field in ("model_type", "hidden_size", "num_hidden_layers"):
        if getattr(mine, field, None) != getattr(theirs, field, None):
            return f"its {field} is {getattr(mine, field, None)}, the policy's {getattr(theirs, field, None)}"
    return None


def _same(weights: _Weights, params: Iterable[tuple[str, torch.Tensor]]) -> bool:
    """Whether the folder holds each named parameter of the policy's backbone, equal to it."""
    for name, param in params:
        saved = weights.get(name)
        if saved is None or not torch.equal(saved.to(param.device, param.dtype), param):
            return False
    return True


def _tuned_layers(weights: _Weights, policy: HFPolicy) -> int | None:
    """The top layers whose tensors differ from the policy's, down to the first equal layer (None: none differ)."""
    stack = layer_stack(policy.backbone)
    for n, k in enumerate(reversed(range(len(stack)))):
        if _same(weights, stack[k].named_parameters(prefix=f"{weights.stack}.{k}")):
            return n or None
    return len(stack)


def _unshared(weights: _Weights, policy: HFPolicy, layers: int | None) -> str | None:
    """Why the classifier cannot share `policy`'s layers below its top `layers`, or None when it can: the embeddings
    and the first and last shared layers are compared tensor by tensor."""
    stack = layer_stack(policy.backbone)
    if layers is None:
        return "no tuned layers recorded, and every layer equals the policy's"
    if layers > len(stack):
        return f"{layers} tuned layers recorded, but it has {len(stack)}"
    below = len(stack) - layers
    shared = list(policy.backbone.get_input_embeddings().named_parameters(prefix=weights.embeddings))
    for k in sorted({0, below - 1} if below else set()):
        shared += list(stack[k].named_parameters(prefix=f"{weights.stack}.{k}"))
    if not _same(weights, shared):
        return f"its lower layers differ from the policy's (it was not tuned on this policy's top {layers} layers)"
    return None


class _Weights:
    """Tensors of a classifier folder read one by one (safetensors, one file or shards), named as in the policy's
    backbone: the file's key is `prefix` + the backbone's parameter name (None: the folder names no such layer)."""

    def __init__(self, folder: Path, backbone: PreTrainedModel) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {key: folder / file for key, file in weight_map.items()}
        else:
            from safetensors import safe_open

            single = folder / "model.safetensors"
            with safe_open(str(single), framework="pt") as f:
                self.files = {key: single for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        names = {id(m): n for n, m in backbone.named_modules()}
        stack = layer_stack(backbone)
        self.stack = names[id(stack)]
        self.embeddings = names[id(backbone.get_input_embeddings())]
        probe = f"{self.stack}.{len(stack) - 1}.{next(n for n, _ in stack[-1].named_parameters())}"
        found = [key for key in self.files if key == probe or key.endswith("." + probe)]
        self.prefix: str | None = found[0][: len(found[0]) - len(probe)] if len(found) == 1 else None

    def get(self, name: str, top_level: bool = False) -> torch.Tensor | None:
        """The tensor of the backbone's parameter `name` (`top_level`: a key of the classifier itself), or None."""
        from safetensors import safe_open

        key = name if top_level else f"{self.prefix}{name}"
        if key not in self.files:
            return None
        with safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_tensor(key)


def _load_top(weights: _Weights, policy: HFPolicy, config: Any, layers: int) -> TopLayers | None:
    """The N tuned layers, final norm and score layer of the classifier, as a backbone of N layers on the
    policy's device and dtype (only those tensors are read); None when a tensor is missing or the stack scales what
    it is fed."""
    from accelerate import init_empty_weights  # type: ignore[import-untyped]
    from transformers import AutoModel

    text = config.get_text_config()
    total = int(text.num_hidden_layers)
    below = total - layers
    trimmed = copy.deepcopy(text)
    trimmed.num_hidden_layers = layers
    if isinstance(getattr(trimmed, "layer_types", None), list):
        trimmed.layer_types = trimmed.layer_types[below:]
    attention = getattr(policy.backbone.config, "_attn_implementation", None)
    with init_empty_weights():
        backbone = AutoModel.from_config(trimmed, attn_implementation=attention)
    embeddings = weights.embeddings + "."
    stack = f"{weights.stack}."
    tensors: dict[str, torch.Tensor] = {}
    for name in backbone.state_dict():
        if name.startswith(embeddings):
            continue
        source = name
        if name.startswith(stack):
            k, rest = name[len(stack) :].split(".", 1)
            source = f"{stack}{below + int(k)}.{rest}"
        tensor = weights.get(source)
        if tensor is None:
            return None
        tensors[name] = tensor
    score_weight = weights.get("score.weight", top_level=True)
    if score_weight is None or score_weight.shape[0] != 1:
        return None
    backbone.load_state_dict(tensors, strict=False, assign=True)
    backbone.set_input_embeddings(nn.Embedding(1, int(text.hidden_size)))  # never read: it is fed states
    if any(p.is_meta for p in backbone.parameters()):
        return None
    score_bias = weights.get("score.bias", top_level=True)
    score = nn.Linear(int(text.hidden_size), 1, bias=score_bias is not None)
    with torch.no_grad():
        score.weight.copy_(score_weight)
        if score_bias is not None and score.bias is not None:
            score.bias.copy_(score_bias)
    dtype = next(policy.backbone.parameters()).dtype
    top = TopLayers(backbone, score, total).to(policy.device, dtype).eval().requires_grad_(False)
    return top if _fed_as_is(top) else None


@torch.no_grad()
def _fed_as_is(top: TopLayers) -> bool:
    """Whether the first of the N layers receives exactly the states the backbone is fed (no input scaling)."""
    seen: list[torch.Tensor] = []
    first = layer_stack(top.backbone)[0]
    handle = first.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    try:
        probe = torch.randn(1, 2, top.score.in_features, generator=torch.Generator().manual_seed(0))
        probe = probe.to(top.score.weight)
        top.runner.module(inputs_embeds=probe, attention_mask=torch.ones(1, 2, dtype=torch.long, device=probe.device))
    finally:
        handle.remove()
    return len(seen) == 1 and torch.equal(seen[0], probe)
