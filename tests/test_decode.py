"""The decode loop's shortcuts against a plain teacher-forced forward: top-k sampling keeps to the model's top k,
log π_base is the sum of log-softmaxes, and rows that end early keep their last state while the others go on."""

from __future__ import annotations

import torch

from spi_align.config import GenerationConfig
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea."), Prompt("c", "Hi")]


def teacher_forced(policy: HFPolicy, prompt: Prompt, response: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each response token (n, V) and the hidden state after the last one (H,)."""
    ids = policy.tokenizer(policy.format_prompt(prompt), add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + response])
    with torch.no_grad():
        logits = policy.model(input_ids=full).logits[0, len(ids) - 1 : -1]
        hidden = policy.backbone(input_ids=full).last_hidden_state[0, -1]
    return logits, hidden


def test_top_k_sampling_stays_in_the_top_k_and_logprob_is_exact(tiny_causal_lm, smol_tokenizer):
    gen = GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=5)
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, gen, seed=3)
    assert policy.sampler.fast
    rows = policy.sample(PROMPTS, 2, Cost())
    for r, tokens in enumerate(rows.token_lists()):
        logits, _ = teacher_forced(policy, PROMPTS[int(rows.prompt_index[r])], tokens)
        top = logits.topk(5, dim=-1).indices
        assert all(t in top[i].tolist() for i, t in enumerate(tokens))
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None]).sum()
        torch.testing.assert_close(rows.logprob[r], expected, atol=1e-3, rtol=1e-4)


def test_rows_ending_early_keep_their_last_state(tiny_causal_lm, smol_tokenizer):
    # sampled, not greedy: a random tiny model's greedy rows repeat one token; the same seed gives the same draws
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=50)
    full = HFPolicy(tiny_causal_lm, smol_tokenizer, gen, seed=5).sample(PROMPTS, 1, Cost()).token_lists()
    # an end token that one row emits mid-way (not first, not last) and another row never emits
    stop = next(
        t
        for row in full
        for i, t in enumerate(row[1:-1], start=1)
        if t not in row[:i] and any(t not in other for other in full)
    )
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, gen, seed=5)
    policy.eos_ids = torch.tensor([stop])
    rows = policy.sample(PROMPTS, 1, Cost())
    got = rows.token_lists()
    assert any(rows.done.tolist()) and not all(rows.done.tolist())
    for r, prompt in enumerate(PROMPTS):
        cut = full[r].index(stop) + 1 if stop in full[r] else len(full[r])
        assert got[r] == full[r][:cut]  # rows go on exactly as without the early end of another
        assert bool(rows.done[r]) == (stop in full[r])
        logits, hidden = teacher_forced(policy, prompt, got[r])
        torch.testing.assert_close(rows.hidden[r], hidden, atol=1e-4, rtol=1e-4)
        last = torch.log_softmax(logits, -1).gather(1, torch.tensor(got[r])[:, None]).sum()
        torch.testing.assert_close(rows.logprob[r], last, atol=1e-3, rtol=1e-4)
