"""Teacher-forced features: the policy's last hidden state after every response token of finished rollouts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.records import Prompt
from spi_align.hf.batches import pad_batch
from spi_align.policy import HFPolicy


@torch.no_grad()
def response_hidden_states(
    policy: HFPolicy, prompts: Sequence[Prompt], responses: Sequence[Sequence[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """For each (prompt, response tokens): a (len, H) tensor, row t = hidden state of state s_{t+1} = [x, y_1..y_t].

    These are exactly the states the search scores, so a head trained on them scores partial responses.
    """
    prompt_ids = policy.prompt_ids(prompts)
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [
            list(p) + list(r)
            for p, r in zip(prompt_ids[start : start + batch_size], responses[start : start + batch_size], strict=True)
        ]
        ids, mask = pad_batch(seqs, policy.pad_id, device=policy.device)
        hidden = policy.runner.hidden(ids, mask).float().cpu()
        width = ids.shape[1]
        for row, response in enumerate(responses[start : start + batch_size]):
            n = len(response)
            out.append(hidden[row, width - n :] if n else hidden[row, :0])
    return out
