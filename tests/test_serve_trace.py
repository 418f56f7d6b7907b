"""`spi serve` returns an answer's record on request: `extra_body={"return_trace": true}` gives each choice the
field `trace`, the search's record (`SearchResult.to_record()`: candidates with their rewards and, for the chunk
search, its tree), with the real `openai` client; without the flag no choice carries it. The servers are
test_serve's (a real uvicorn on a tiny random policy)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import pytest

from test_serve import CHAT, MAX_TOKENS, Running, tiny_servable


@pytest.fixture(scope="module")
def running(_smol_tokenizer_once) -> Iterator[Running]:
    server = Running(tiny_servable(copy.deepcopy(_smol_tokenizer_once)), max_wait_ms=5, max_tokens=64)
    yield server
    server.stop()


def path_tokens(trace: dict, node: int) -> list[int]:
    tokens: list[int] = []
    while node >= 0:
        tokens = trace["tokens"][node] + tokens
        node = trace["parent"][node]
    return tokens


def test_the_chunk_search_returns_its_tree_when_asked(running):
    client = running.client()
    ask = dict(model="spi-1", messages=CHAT, max_tokens=MAX_TOKENS, seed=3)
    plain = client.chat.completions.create(**ask)
    assert "trace" not in (plain.choices[0].model_extra or {})  # off by default
    out = client.chat.completions.create(extra_body={"return_trace": True}, **ask)
    [choice] = out.choices
    assert choice.message.content == plain.choices[0].message.content  # recording changes no answer
    record = choice.model_extra["trace"]
    assert record["response"] == choice.message.content and len(record["candidates"]) == 4
    trace = record["trace"]
    # W = K = 2, L = 3, 6 tokens: 4 chunks from the prompt, 2 kept, 2 successors each
    assert trace["parent"][:4] == [-1] * 4 and len(trace["parent"]) == 8
    assert sorted(trace["kept"][:4]) == [0, 0, 1, 1]
    chosen = record["candidates"][trace["candidate"][trace["chosen"]]]
    assert chosen["text"] == record["response"] and path_tokens(trace, trace["chosen"]) == chosen["token_ids"]
    again = client.chat.completions.create(**ask)  # the next request without the flag gets none
    assert "trace" not in (again.choices[0].model_extra or {})


def test_best_of_n_returns_its_candidates_and_text_completions_too(running):
    out = running.client().completions.create(
        model="bon-4", prompt=["Say hello.", "Count."], max_tokens=3, extra_body={"return_trace": True}
    )
    for choice in out.choices:
        record = choice.model_extra["trace"]
        assert "trace" not in record and len(record["candidates"]) == 4  # best-of-N: its candidates are the record
        assert record["score"] == max(c["score"] for c in record["candidates"])


def test_a_stream_carries_the_record_on_each_choices_last_chunk(running):
    chunks = list(
        running.client().chat.completions.create(
            model="spi-1", messages=CHAT, max_tokens=MAX_TOKENS, stream=True, extra_body={"return_trace": True}
        )
    )
    traced = [c.choices[0].model_extra["trace"] for c in chunks if c.choices and "trace" in c.choices[0].model_extra]
    assert len(traced) == 1 and "trace" in traced[0]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert traced[0]["response"] == content


def test_raw_bodies_carry_no_trace_unless_asked_and_refuse_a_bad_flag(running):
    body = {"model": "spi-1", "messages": CHAT, "max_tokens": 3}
    plain = httpx.post(running.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert "trace" not in plain["choices"][0]
    bad = httpx.post(running.url + "/v1/chat/completions", json={**body, "return_trace": "yes"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "return_trace"
