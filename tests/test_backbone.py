"""The shared backbone helpers: padding, positions from the mask, the cache-argument probe, and a second model's own
KV cache fed chunk by chunk through row selections, equal to encoding each row alone."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from conftest import make_tiny_backbone
from spi_align.hf.batches import BackboneRunner, pad_batch, positions_from_mask
from spi_align.hf.kv_cache import GrowingLayer, growing_cache
from spi_align.hf.side_cache import SideCache, row_state


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_positions_skip_padding_and_gaps():
    mask = torch.tensor([[0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5]]
    assert positions_from_mask(mask, new_tokens=2).tolist() == [[1, 2], [4, 5]]


class _Recorder(nn.Module):
    """A stand-in backbone with the later transformers signature: `cache`, no position ids, no use_cache."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set[str]] = []

    def forward(self, input_ids, attention_mask=None, cache=None):
        self.calls.append({k for k, v in locals().items() if v is not None and k not in ("self", "__class__")})
        return type("Out", (), {"last_hidden_state": input_ids[..., None].float()})()


def test_runner_passes_only_what_the_forward_takes(smol_tokenizer):
    module = _Recorder()
    runner = BackboneRunner(module)
    assert runner.cache_arg == "cache" and not runner.takes_positions
    runner.hidden(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), cache="kv")
    runner.hidden(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    assert module.calls == [{"input_ids", "attention_mask", "cache"}, {"input_ids", "attention_mask"}]
    llama = BackboneRunner(make_tiny_backbone(smol_tokenizer))
    assert llama.cache_arg in ("past_key_values", "cache") and llama.takes_positions and llama.takes_use_cache


@torch.no_grad()
def _alone(backbone, tokens: list[int]) -> torch.Tensor:
    return backbone(input_ids=torch.tensor([tokens])).last_hidden_state[0]


@torch.no_grad()
def test_side_cache_fed_by_chunks_through_selections_equals_each_row_alone(smol_tokenizer):
    backbone = make_tiny_backbone(smol_tokenizer, seed=3)
    runner = BackboneRunner(backbone)
    prompts = [[1, 17, 18, 19, 20], [1, 30]]
    gen = torch.Generator().manual_seed(0)
    response = torch.randint(3, 300, (4, 12), generator=gen)
    length = torch.zeros(4, dtype=torch.long)
    prompt_index = torch.tensor([0, 0, 1, 1])
    state = SideCache.prefill([runner], prompts, prompt_index, pad_id=0, device=torch.device("cpu"))
    for r in range(4):
        torch.testing.assert_close(state.last[0][r], _alone(backbone, prompts[prompt_index[r]])[-1], atol=1e-5, rtol=0)
    steps = [(torch.tensor([3, 2, 3, 1]), None), (torch.tensor([6, 2, 5, 4]), torch.tensor([2, 0, 0, 3])), (None, None)]
    for new_length, index in steps:
        if index is not None:  # rows follow a selection: their state and their responses move together
            state.select(index)
            response, length, prompt_index = response[index], length[index], prompt_index[index]
        before = [h.clone() for h in state.last]
        if new_length is None:
            assert state.new_tokens(response, length, pad_id=0) is None  # nothing sampled since: nothing fed
            continue
        length = torch.maximum(length, new_length)
        new = state.new_tokens(response, length, pad_id=0)
        hidden = state.feed(new)[0]
        for r in range(4):
            full = _alone(backbone, prompts[prompt_index[r]] + response[r, : length[r]].tolist())
            n = int(new.count[r])
            torch.testing.assert_close(hidden[r, :n], full[-n:] if n else full[:0], atol=1e-5, rtol=0)
            expected = full[-1] if n else before[0][r]
            torch.testing.assert_close(state.last[0][r], expected, atol=1e-5, rtol=0)
        assert state.fed.tolist() == length.tolist()
    assert bool((new.count == 0).any()) and len(set(new.count.tolist())) > 2  # ragged, with a row that stopped


def test_row_state_is_created_once():
    extras: dict = {}
    made = []
    first = row_state(extras, "k", lambda: made.append(1) or "state")
    again = row_state(extras, "k", lambda: made.append(1) or "other")
    assert first == again == "state" and made == [1] and extras == {"k": "state"}


def test_growing_layer_equals_dynamic_layer_through_updates_crops_and_selections():
    gen = torch.Generator().manual_seed(0)
    grow, plain = GrowingLayer(room=4), DynamicLayer()

    def kv(rows: int, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 2, new, 3, generator=gen), torch.randn(rows, 2, new, 3, generator=gen)

    ops = [
        ("update", kv(3, 5)),
        ("update", kv(3, 1)),  # fits the room: written in place
        ("update", kv(3, 1)),
        ("crop", -1),  # a view; the next update overwrites the cropped position
        ("update", kv(3, 1)),
        ("reorder", torch.tensor([2, 0, 0, 1])),  # rows of the buffer, room included
        ("update", kv(4, 2)),
        ("update", kv(4, 7)),  # past the room: a new buffer
        ("select", torch.tensor([1, 3])),  # the base class's batch operation: no longer a prefix of the buffer
        ("update", kv(2, 1)),
    ]
    moved = []
    for name, arg in ops:
        before = grow.keys.data_ptr() if grow.is_initialized and grow.held() else None
        for layer in (grow, plain):
            if name == "update":
                out = layer.update(*arg)
            elif name == "crop":
                layer.crop(arg)
            elif name == "reorder":
                layer.reorder_cache(arg)
            else:
                layer.batch_select_indices(arg)
        if name == "update":
            torch.testing.assert_close(out[0], plain.keys, rtol=0, atol=0)
            moved.append(before is None or grow.keys.data_ptr() != before)
        torch.testing.assert_close(grow.keys, plain.keys, rtol=0, atol=0)
        torch.testing.assert_close(grow.values, plain.values, rtol=0, atol=0)
        assert grow.get_seq_length() == plain.get_seq_length()
    # reallocated only at the start, after the reorder's new buffer ran out of room, and after the base selection
    assert moved == [True, False, False, False, False, True, True]


def test_runner_caches_grow_in_place_and_decode_like_a_plain_cache(smol_tokenizer):
    backbone = make_tiny_backbone(smol_tokenizer, seed=4)
    runner = BackboneRunner(backbone)
    ids, mask = pad_batch([[1, 17, 18, 19], [1, 30]], pad_id=0, side="left")
    caches = [runner.new_cache(), DynamicCache(config=backbone.config)]
    assert all(isinstance(layer, GrowingLayer) for layer in caches[0].layers)
    assert growing_cache(DynamicCache(config=backbone.config)).layers[0].room == 64
    hidden = [runner.hidden(ids, mask, cache) for cache in caches]
    for step in range(3):
        token = torch.tensor([[5 + step], [9 + step]])
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        for cache in caches:
            cache.reorder_cache(torch.tensor([1, 0]) if step == 1 else torch.tensor([0, 1]))
        hidden = [runner.hidden(token, mask, cache) for cache in caches]
        torch.testing.assert_close(hidden[0], hidden[1], rtol=0, atol=1e-6)
