"""Teacher-forced features: the policy's last hidden state after every response token of finished rollouts (the
h_t of `prefix_states` at every length, one pass per batch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.interfaces import HiddenStatePolicy
from spi_align.core.records import Prompt
from spi_align.values.prefix_states import prefix_states


@torch.no_grad()
def response_hidden_states(
    policy: HiddenStatePolicy, prompts: Sequence[Prompt], responses: Sequence[Sequence[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """For each (prompt, response tokens): a (len, H) tensor, row t = hidden state of state s_{t+1} = [x, y_1..y_t].

    These are exactly the states the search scores, so a head trained on them scores partial responses.
    """
    longest = max((len(r) for r in responses), default=0)
    states = prefix_states(policy, prompts, responses, range(1, longest + 1), batch_size, closed=False)
    return [s.hidden for s in states]
