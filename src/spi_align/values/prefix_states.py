"""Teacher-forced prefix states of finished rollouts, at the prefix lengths where the search ranks candidates.

For each rollout (x, y) and each prefix length t, two states of the frozen policy:

- h_t: the last hidden state after [x, y_1..y_t] — what a value head reads during the search;
- e_t: the last hidden state after [x, y_1..y_t, <end>] — what a reward head on the policy reads, so that
  R_t = head(e_t) is the reward of the partial response closed at t (the reward on partial text, for free).

One forward encodes each rollout with its KV cache; every e_t is then one one-token forward of the end token with
the response's columns after t masked out and position P + t (P = prompt length), the cache cropped back after.
So all prefix lengths cost one pass plus one token each, instead of one re-encoding per prefix. With
`closed=False` only the h_t are computed (one pass, no cache): the teacher-forced features the value heads are
trained on (`features.response_hidden_states`).

Inside a timed cost (`Cost.timer`, e.g. the training steps `spi run` records) the pass bills its tokens to it: the
teacher-forced tokens as `policy_prefill`, the end tokens fed for e_t as `peek`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spi_align.core.records import Prompt, billed
from spi_align.hf.batches import pad_batch


@dataclass
class PrefixStates:
    """One rollout's states at its prefix lengths `lengths` (those ≤ the response length, ascending)."""

    lengths: list[int]
    hidden: torch.Tensor
    """(n, H) h_t for each length."""
    closed: torch.Tensor
    """(n, H) e_t for each length: after the end token (for the full, finished response: its own end token)."""


@torch.no_grad()
def prefix_states(
    policy,
    prompts: Sequence[Prompt],
    responses: Sequence[Sequence[int]],
    lengths: Sequence[int],
    batch_size: int = 16,
    closed: bool = True,
) -> list[PrefixStates]:
    """States h_t and e_t of every rollout at every t in `lengths` that fits it, plus t = its full length; without
    `closed`, only h_t (each `PrefixStates.closed` is empty)."""
    device, runner = policy.device, policy.runner
    end_id = int(policy.end_id)
    eos = {int(e) for e in policy.eos_ids.tolist()}
    unique = list({p.id: p for p in prompts}.values())
    encoded = dict(zip([p.id for p in unique], policy.prompt_ids(unique), strict=True))
    out: list[PrefixStates] = []
    for start in range(0, len(responses), batch_size):
        batch_p = prompts[start : start + batch_size]
        batch_r = [list(r) for r in responses[start : start + batch_size]]
        seqs = [list(encoded[p.id]) + r for p, r in zip(batch_p, batch_r, strict=True)]
        ids, mask = pad_batch(seqs, policy.pad_id, "left", device)
        width = ids.shape[1]
        cache = runner.new_cache() if closed else None
        hidden = runner.hidden(ids, mask, cache).float()
        if (cost := billed()) is not None:
            cost.count_forward("policy_prefill", int(mask.sum()))
        per_row = [sorted({t for t in lengths if 0 < t <= len(r)} | ({len(r)} if r else set())) for r in batch_r]
        ends: list[dict[int, torch.Tensor]] = [{} for _ in batch_r]
        for t in sorted({t for ts in per_row for t in ts}) if cache is not None else []:
            assert cache is not None  # for the type checker: the loop runs only with a cache
            need = []
            for row, r in enumerate(batch_r):
                if t in per_row[row]:
                    if t == len(r) and r[-1] in eos:  # the response closed itself: its last state is e_t
                        ends[row][t] = hidden[row, -1]
                    else:
                        need.append(row)
            if not need:
                continue
            rows = torch.tensor(need, device=device)
            step_mask = mask.clone()
            for row in need:  # hide the response after y_t
                cut = width - len(batch_r[row]) + t
                step_mask[row, cut:] = 0
            step_mask = torch.cat([step_mask, torch.zeros_like(step_mask[:, :1])], dim=1)
            step_mask[rows, -1] = 1
            token = torch.full((len(seqs), 1), end_id, dtype=torch.long, device=device)
            fed = runner.hidden(token, step_mask, cache)[:, -1].float()
            if (cost := billed()) is not None:
                cost.count_forward("peek", len(need))
            cache.crop(-1)
            for row in need:
                ends[row][t] = fed[row]
        for row, r in enumerate(batch_r):
            ts = per_row[row]
            h = torch.stack([hidden[row, width - len(r) + t - 1] for t in ts]) if ts else hidden[row, :0]
            e = torch.stack([ends[row][t] for t in ts]) if ts and cache is not None else hidden[row, :0]
            out.append(PrefixStates(ts, h.cpu(), e.cpu()))
    return out


STATES_FILE = "prefix_states.safetensors"


def save_states(states: Sequence[PrefixStates], folder: Path) -> None:
    """All rollouts' states in one safetensors file (concatenated, with each rollout's lengths)."""
    counts = torch.tensor([len(s.lengths) for s in states], dtype=torch.long)
    width = next((s.hidden.shape[1] for s in states if s.lengths), 0)
    tensors = {
        "counts": counts,
        "lengths": torch.tensor([t for s in states for t in s.lengths], dtype=torch.long),
        "hidden": torch.cat([s.hidden.reshape(-1, width) for s in states]).contiguous(),
        "closed": torch.cat([s.closed.reshape(-1, width) for s in states]).contiguous(),
    }
    save_file(tensors, folder / STATES_FILE)


def load_states(folder: Path) -> list[PrefixStates]:
    tensors = load_file(folder / STATES_FILE)
    out, start = [], 0
    for n in tensors["counts"].tolist():
        end = start + n
        out.append(
            PrefixStates(
                tensors["lengths"][start:end].tolist(), tensors["hidden"][start:end], tensors["closed"][start:end]
            )
        )
        start = end
    return out
