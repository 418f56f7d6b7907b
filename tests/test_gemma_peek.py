"""The end-token peek on a Gemma 3 policy (sliding-window layers, 262k vocabulary): it never computes logits, its crop
works past the window, and generation after a peek equals generation without one; the sliding layers' cache grows
in a buffer instead of being concatenated at every step."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

from conftest import make_policy, tiny_gemma3
from spi_align.core.records import Cost, Prompt
from spi_align.hf.batches import BackboneRunner
from spi_align.hf.kv_cache import GrowingLayer, GrowingSlidingLayer

WINDOW = 8
PROMPTS = [Prompt("a", "Hi"), Prompt("b", "Tell me a long story about the sea and the sky, please.")]


def _kv(gen: torch.Generator, rows: int, new: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 2, new, 3, generator=gen), torch.randn(rows, 2, new, 3, generator=gen)


def test_growing_sliding_layer_equals_transformers_layer_and_crops_past_the_window():
    gen = torch.Generator().manual_seed(0)
    window = 5
    grow = GrowingSlidingLayer(window, room=3)
    plain = DynamicSlidingWindowLayer(window)
    plain.activate_past_recording()  # the reference keeps its past, so that it can crop past the window too
    ops: list[tuple[str, Any]] = [
        ("update", _kv(gen, 3, 2)),  # a new buffer, with room
        ("update", _kv(gen, 3, 1)),  # written in the room, in place
        ("update", _kv(gen, 3, 1)),
        ("crop", -1),  # below the window: a view
        ("update", _kv(gen, 3, 1)),
        ("update", _kv(gen, 3, 1)),
        ("update", _kv(gen, 3, 1)),  # past the window, and the room is spent: the window moves to a new buffer
        ("crop", -1),  # past the window: transformers' layer raises here unless it records its past
        ("update", _kv(gen, 3, 1)),
        ("reorder", torch.tensor([2, 0, 0, 1])),
        ("update", _kv(gen, 4, 1)),
        ("crop", -1),  # the update after a reorder
        ("update", _kv(gen, 4, 7)),  # longer than the room: a new buffer
        ("crop", -7),
        ("update", _kv(gen, 4, 1)),
        ("update", _kv(gen, 4, 1)),
    ]
    moved = []
    for step, (name, arg) in enumerate(ops):
        before = grow.buffers[0].data_ptr() if grow.buffers is not None else None
        if name == "update":
            mine, theirs = grow.update(*arg), plain.update(*arg)
            for a, b in zip(mine, theirs, strict=True):  # what attention reads: the window, then the new positions
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            moved.append(before is None or grow.buffers[0].data_ptr() != before)
        elif name == "crop":
            grow.crop(arg)
            plain.crop(arg)
        else:
            grow.reorder_cache(arg)
            plain.reorder_cache(arg)
        visible = min(plain.get_seq_length(), window - 1)  # the window the next update sees
        for mine, theirs in ((grow.keys, plain.keys), (grow.values, plain.values)):
            torch.testing.assert_close(mine, theirs[..., theirs.shape[-2] - visible :, :], rtol=0, atol=0)
        assert grow.get_seq_length() == plain.get_seq_length(), step
        assert grow.get_mask_sizes(1) == plain.get_mask_sizes(1), step
    # a copy of the window only when the room ran out (transformers' layer concatenates it at every update)
    assert moved == [True, False, False, False, False, True, False, False, True, False, False]


def test_the_runner_cache_of_a_gemma3_grows_its_sliding_layers_in_place():
    model = tiny_gemma3()
    cache = BackboneRunner(model.model).new_cache()
    assert [type(layer) for layer in cache.layers] == [GrowingSlidingLayer, GrowingSlidingLayer, GrowingLayer]
    assert all(layer.sliding_window == WINDOW for layer in cache.layers[:2])


@torch.no_grad()
def test_gemma3_peek_reads_no_logits_crops_past_the_window_and_leaves_generation_unchanged(smol_tokenizer):
    runs = []
    for peek in (False, True):
        policy = make_policy(tiny_gemma3(), smol_tokenizer, max_new_tokens=24)
        head_calls: list[int] = []
        policy.lm_head.register_forward_hook(lambda *_, calls=head_calls: calls.append(1))
        cost = Cost()
        rows = policy.start(PROMPTS[:1], cost)  # one prompt: no padding, so each row can be checked alone
        rows = policy.extend(rows.select(torch.zeros(3, dtype=torch.long)), 4, cost)
        peeked = []
        for _ in range(4):
            if peek:
                calls = len(head_calls)
                peeked.append((rows.token_lists(), policy.peek_end_hidden(rows)))
                assert len(head_calls) == calls, "the peek computed logits over the vocabulary"
            rows = policy.extend(rows.select(torch.tensor([2, 0, 1])), 4, cost)
        runs.append(rows)
        assert rows.attention_mask is not None and rows.attention_mask.shape[1] > 2 * WINDOW  # well past the window
    plain, peeking = runs
    assert torch.equal(plain.response, peeking.response)
    torch.testing.assert_close(plain.hidden, peeking.hidden, rtol=0, atol=0)
    torch.testing.assert_close(plain.next_logits, peeking.next_logits, rtol=0, atol=0)
    backbone = tiny_gemma3().model
    prompt = peeking.prompt_tokens[0]
    for responses, hidden in peeked:  # each peek: the state after the end token, as a forward from scratch gives it
        for r, response in enumerate(responses):
            ids = torch.tensor([[*prompt, *response, policy.end_id]])
            alone = backbone(input_ids=ids).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[r], alone, rtol=0, atol=1e-5)
