"""The top-k sampling path draws from the same distribution as transformers' warpers, greedy stays exact, and the
same seed gives the same tokens."""

from __future__ import annotations

import math

import pytest
import torch

from spi_align.config import GenerationConfig
from spi_align.policy.sampling import TokenSampler, token_logprob

VOCAB = 3000


def warper_probs(sampler: TokenSampler, logits: torch.Tensor) -> torch.Tensor:
    """The exact distribution of the vocabulary-wide path: softmax over the warped logits."""
    return torch.softmax(sampler.warpers(None, logits), dim=-1)


def frequencies(sampler: TokenSampler, logits: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = sampler(logits.expand(draws, -1), gen)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws


def random_logits(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, VOCAB, generator=gen) * 3


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_top_k_path_has_the_warpers_support_and_frequencies(top_p):
    gen_cfg = GenerationConfig(temperature=0.7, top_k=50, top_p=top_p)
    fast, slow = TokenSampler(gen_cfg), TokenSampler(gen_cfg, fast=False)
    assert fast.fast and not slow.fast
    logits = random_logits(1)
    exact = warper_probs(slow, logits)[0]
    got = frequencies(fast, logits, 40_000, seed=0)
    reference = frequencies(slow, logits, 40_000, seed=0)
    support = exact > 0
    assert bool((got[~support] == 0).all())  # never a token the warpers remove
    if top_p == 1.0:
        assert int(support.sum()) == 50
    else:
        assert 1 < int(support.sum()) < 50  # top-p removed some of the top 50
    tv_fast = 0.5 * float((got - exact).abs().sum())
    tv_slow = 0.5 * float((reference - exact).abs().sum())
    assert tv_fast < 0.03, tv_fast  # sampling noise at 40k draws over ≤ 50 tokens is ~0.01
    assert tv_fast < tv_slow + 0.02


def test_top_p_kept_set_equals_the_warpers_exactly():
    for seed in range(20):
        logits = random_logits(seed)
        for top_p in (0.3, 0.9, 0.99):
            gen_cfg = GenerationConfig(temperature=1.3, top_k=40, top_p=top_p)
            sampler = TokenSampler(gen_cfg)
            kept_by_warpers = set(torch.isfinite(sampler.warpers(None, logits))[0].nonzero().squeeze(1).tolist())
            tokens = sampler(logits.expand(5000, -1), torch.Generator().manual_seed(seed))
            assert set(tokens.tolist()) <= kept_by_warpers


def test_greedy_is_exact_argmax_whatever_the_other_settings():
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(3))
    sampler = TokenSampler(GenerationConfig(do_sample=False, top_k=5, top_p=0.5, temperature=0.3))
    assert torch.equal(sampler(logits, torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = torch.randn(32, VOCAB, generator=torch.Generator().manual_seed(4))
    sampler = TokenSampler(GenerationConfig(top_k=50, top_p=0.9))
    a = sampler(logits, torch.Generator().manual_seed(11))
    b = sampler(logits, torch.Generator().manual_seed(11))
    c = sampler(logits, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_off_keeps_the_warper_path():
    assert not TokenSampler(GenerationConfig(top_k=0)).fast


def test_token_logprob_equals_log_softmax_gather():
    logits = torch.randn(16, VOCAB, generator=torch.Generator().manual_seed(5)) * 4
    tokens = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(6))
    expected = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(token_logprob(logits, tokens), expected, atol=1e-5, rtol=1e-6)


def test_output_logits_are_soft_capped_as_the_config_asks_and_feed_token_logprob():
    from types import SimpleNamespace

    from spi_align.hf.batches import pad_token_id
    from spi_align.policy.sampling import final_logit_softcap, output_logits

    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0], [-2.0]]))
    hidden = torch.tensor([[1.0]])
    assert output_logits(head, hidden, None).tolist() == [[4.0, -2.0]]
    capped = output_logits(head, hidden, 2.0)
    assert capped[0].tolist() == pytest.approx([2 * math.tanh(2.0), 2 * math.tanh(-1.0)])
    expected = capped[0, 1] - torch.logsumexp(capped[0], dim=0)
    assert token_logprob(capped, torch.tensor([1])).tolist() == pytest.approx([float(expected)])
    text = SimpleNamespace(final_logit_softcapping=30.0)
    assert final_logit_softcap(SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text))) == 30.0
    # the pad id: the tokenizer's pad token, else the caller's fallback (a policy's end-of-turn), else EOS, else 0
    tok = SimpleNamespace(pad_token_id=None, eos_token_id=7)
    assert pad_token_id(tok) == 7 and pad_token_id(tok, 3) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=5, eos_token_id=7), 3) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
