"""Teacher-forced features: the policy's last hidden state after every response token of finished rollouts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.interfaces import Prompt
from spi_align.policy import HFPolicy


@torch.no_grad()
def response_hidden_states(
    policy: HFPolicy, prompts: Sequence[Prompt], responses: Sequence[Sequence[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """For each (prompt, response tokens): a (len, H) tensor, row t = hidden state of state s_{t+1} = [x, y_1..y_t].

    These are exactly the states the search scores, so a head trained on them scores partial responses.
    """
    tok = policy.tokenizer
    prompt_ids = [
        tok(policy.format_prompt(p), add_special_tokens=not policy.chat_template)["input_ids"] for p in prompts
    ]
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [
            list(p) + list(r)
            for p, r in zip(prompt_ids[start : start + batch_size], responses[start : start + batch_size], strict=True)
        ]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), policy.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = (
            policy.backbone(
                input_ids=ids.to(policy.device),
                attention_mask=mask.to(policy.device),
                position_ids=positions.to(policy.device),
            )
            .last_hidden_state.float()
            .cpu()
        )
        for row, response in enumerate(responses[start : start + batch_size]):
            n = len(response)
            out.append(hidden[row, width - n :] if n else hidden[row, :0])
    return out
