"""Models that read the policy's text through another tokenizer keep their own KV cache (`TextSideCache`): fed only
the ids past what is cached, the tokens whose tokenisation changed re-encoded, equal to encoding every text from
scratch, billed by the tokens fed, through row selections and inside the beam search."""

from __future__ import annotations

from typing import Any

import torch

from conftest import make_policy, make_tiny_backbone, make_tiny_causal_lm, tiny_llama_config
from mocks.scorers import LengthScorer
from spi_align.core.records import Cost, Prompt
from spi_align.hf.batches import BackboneRunner
from spi_align.hf.text_cache import TextSideCache
from spi_align.search.beam import ChunkBeamSearch
from spi_align.values.guide import ValueModelGuide
from spi_align.values.model import ValueModel

PROMPTS = [
    Prompt("a", "Name three colours."),
    Prompt("b", "Write a short poem about the sea, please."),
    Prompt("c", "Hi"),
]


@torch.no_grad()
def _alone(backbone: Any, ids: list[int]) -> torch.Tensor:
    return backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]


@torch.no_grad()
def test_text_cache_feeds_what_changed_and_equals_each_sequence_alone(smol_tokenizer):
    backbone = make_tiny_backbone(smol_tokenizer, seed=3)
    runner = BackboneRunner(backbone, component="value")
    p0, p1 = [1, 17, 18, 19, 20], [1, 30]
    cost = Cost()
    with cost.timer("value"):
        state = TextSideCache.prefill([runner], [p0, p1], torch.tensor([0, 0, 1]), 0, torch.device("cpu"))
    assert cost.forward_tokens["value"] == 7  # each prompt once
    # (selection before the step, each row's new sequence, ids fed per row, tokens re-encoded so far)
    steps = [
        (None, [p0 + [5, 6, 7], p0 + [5, 6], p1 + [8]], [3, 2, 1], 0),
        (None, [p0 + [5, 6, 9, 10], p0 + [5, 6], p1 + [8, 11, 12]], [2, 0, 2], 1),  # 7 became 9 10: 7 re-encoded
        (
            [2, 0, 0, 1],
            [
                p1 + [8, 11],  # now a prefix of what is cached: 11 fed again to read its state, 12 dropped
                p0 + [5, 4, 9, 10],  # changed inside: 4 9 10 fed, 6 9 10 dropped
                p0 + [5, 6, 9, 10, 13],  # grew
                [1, 17, 18, 19, 21, 6],  # changed inside the prompt (a joint tokenisation may): 21 6 fed
            ],
            [1, 3, 1, 2],
            1 + 2 + 3 + 3,
        ),
        (None, [p1 + [8, 11], p0 + [5, 4, 9, 10], p0 + [5, 6, 9, 10, 13], [1, 17, 18, 19, 21, 6]], [0, 0, 0, 0], 9),
    ]
    length = torch.zeros(3, dtype=torch.long)
    billed = 7
    for step, (index, seqs, counts, refed) in enumerate(steps):
        if index is not None:
            state.select(torch.tensor(index))
            length = length[torch.tensor(index)]
        length = length + 1  # every row sampled a token: every row is pending
        assert state.pending(length) == list(range(len(seqs)))
        before = [h.clone() for h in state.last]
        with cost.timer("value"):
            new = state.update(range(len(seqs)), seqs, length, pad_id=0)
        assert state.pending(length) == []
        billed += sum(counts)
        assert cost.forward_tokens["value"] == billed, step  # only the ids fed are computed
        assert state.refed == refed, step
        assert state.ids == seqs
        if not any(counts):
            assert new is None
            torch.testing.assert_close(state.last[0], before[0], rtol=0, atol=0)
            continue
        assert new is not None and new.count.tolist() == counts, step
        for r, seq in enumerate(seqs):
            full = _alone(backbone, seq)
            torch.testing.assert_close(state.last[0][r], full[-1], atol=1e-5, rtol=0)
            kept, n = int(new.kept[r]), counts[r]
            torch.testing.assert_close(new.hidden[0][r, :n], full[kept : kept + n], atol=1e-5, rtol=0)


def _bert_value_model(seed: int = 7) -> ValueModel:
    """A tiny value model reading MiniLM's WordPiece tokenizer (uncased, its own special tokens): the policy's text
    tokenised another way."""
    from transformers import AutoTokenizer, LlamaModel

    from spi_align.data.assets import minilm_dir

    bert = AutoTokenizer.from_pretrained(minilm_dir())
    config = tiny_llama_config(bert)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = bert.cls_token_id, bert.sep_token_id, 0
    torch.manual_seed(seed)
    model = ValueModel(LlamaModel(config).eval(), bert)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
        model.head.bias.fill_(0.5)
    return model.eval()


def _common(a: list[int], b: list[int]) -> int:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return min(n, len(b) - 1) if a != b else len(b)


def test_beam_search_with_a_value_model_of_another_tokenizer_scores_like_re_encoding(smol_tokenizer):
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=18)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 20)  # some rows stop early
    model = _bert_value_model()
    guide = ValueModelGuide([model], [2.0], policy.tokenizer)
    assert guide.incremental == [False]
    calls = {"fed": 0, "full": 0, "changed": 0, "checked": 0}

    def checked(rows):
        texts = policy.texts(rows)
        seqs = [
            model.prompt_ids(rows.prompts[p]) + model.response_ids(t)
            for p, t in zip(rows.prompt_index, texts, strict=True)
        ]
        state = rows.extras.get(f"value_model_text:{id(model.backbone)}")
        if state is None:  # the first call prefills each prompt of the batch once
            calls["fed"] += sum(len(model.prompt_ids(p)) for p in rows.prompts)
            cached = [model.prompt_ids(rows.prompts[p]) for p in rows.prompt_index.tolist()]
        else:
            cached = [list(ids) for ids in state.ids]  # what the rows' caches hold (reordered with the rows)
        calls["fed"] += sum(len(s) - _common(c, s) for c, s in zip(cached, seqs, strict=True))
        calls["changed"] += sum(len(c) > _common(c, s) for c, s in zip(cached, seqs, strict=True))
        calls["full"] += sum(len(s) for s in seqs)  # what encoding every text from scratch would compute
        got = guide(rows)
        # scored from scratch by the backbone itself (the model's runner would bill the search's cost)
        expected = torch.stack([2.0 * model.value(_alone(model.backbone, s)[-1]) for s in seqs])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        calls["checked"] += 1
        return got

    cost = Cost()
    results = ChunkBeamSearch(policy, checked, LengthScorer(), width=2, successors=3, chunk=3).run(PROMPTS, cost)
    assert len(results) == len(PROMPTS) and calls["checked"] >= 4
    assert cost.forward_tokens["value"] == calls["fed"]  # the new tokens and the changed ones, nothing else
    assert cost.forward_tokens["value"] < calls["full"] / 2  # (432 against 1851 when written)
    assert calls["changed"] > 0, "the test should cover a boundary whose tokenisation changed"
