"""Prefix states of finished rollouts: h_t after [x, y_1..t] and e_t after [x, y_1..t, end], all lengths in one pass,
equal to encoding each prefix on its own."""

from __future__ import annotations

import torch

from spi_align.config import GenerationConfig
from spi_align.core.records import Prompt
from spi_align.policy import HFPolicy
from spi_align.values.prefix_states import prefix_states

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea, please, in four lines.")]


def _alone(policy, prompt, tokens):
    """The last hidden state of prompt + tokens, encoded on its own (no padding, no cache)."""
    ids = policy.tokenizer(policy.format_prompt(prompt), add_special_tokens=False)["input_ids"] + list(tokens)
    with torch.no_grad():
        return policy.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].float()


def test_every_prefix_state_equals_encoding_that_prefix_alone(tiny_causal_lm, smol_tokenizer):
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=12))
    # rollouts of different lengths; the second ends itself with the end token (id 2), the others were cut
    responses = [[100, 200, 300, 400, 500, 600, 700], [11, 12, 13, 2], [42, 43, 44, 45, 46, 47, 48, 49, 50]]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    states = prefix_states(policy, prompts, responses, lengths=[2, 4, 8], batch_size=3)
    assert [s.lengths for s in states] == [[2, 4, 7], [2, 4], [2, 4, 8, 9]]
    for prompt, response, state in zip(prompts, responses, states, strict=True):
        for k, t in enumerate(state.lengths):
            torch.testing.assert_close(state.hidden[k], _alone(policy, prompt, response[:t]), atol=1e-4, rtol=1e-4)
            closed = response[:t] if response[t - 1] == 2 else [*response[:t], 2]
            torch.testing.assert_close(state.closed[k], _alone(policy, prompt, closed), atol=1e-4, rtol=1e-4)


def test_batches_of_one_give_the_same_states(tiny_causal_lm, smol_tokenizer):
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=12))
    responses = [[5, 6, 7, 8, 9], [21, 22, 2]]
    together = prefix_states(policy, PROMPTS, responses, lengths=[1, 3], batch_size=2)
    alone = prefix_states(policy, PROMPTS, responses, lengths=[1, 3], batch_size=1)
    for a, b in zip(together, alone, strict=True):
        assert a.lengths == b.lengths
        torch.testing.assert_close(a.closed, b.closed, atol=1e-4, rtol=1e-4)


def test_without_closed_states_the_same_h_t_come_from_one_pass_and_are_the_features(tiny_causal_lm, smol_tokenizer):
    from spi_align.values.features import response_hidden_states

    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=12))
    responses = [[5, 6, 7, 8, 9], [21, 22, 2], []]
    prompts = [*PROMPTS, PROMPTS[0]]
    full = prefix_states(policy, prompts, responses, lengths=[1, 2, 3, 4, 5])
    light = prefix_states(policy, prompts, responses, lengths=[1, 2, 3, 4, 5], closed=False)
    features = response_hidden_states(policy, prompts, responses)
    for a, b, h, r in zip(full, light, features, responses, strict=True):
        assert a.lengths == b.lengths == list(range(1, len(r) + 1)) and b.closed.numel() == 0
        torch.testing.assert_close(b.hidden, a.hidden, atol=1e-5, rtol=1e-5)
        assert torch.equal(h, b.hidden) and h.shape[0] == len(r)
