"""`spi serve`: the real server (uvicorn on a free loopback port, in a thread) on a tiny random policy, called with
the real `openai` client (and raw HTTP where a client would refuse to send the request).

The servable is a small adapter over plain sampling, best-of-4 and the chunk beam search guided by a random value
head, picked by a stand-in scorer; `gate-sample` is plain sampling that waits for a test's signal, so a test can
hold the worker busy (queue full, time limits, disconnects, SIGTERM while a request is in flight).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import openai
import pytest

from spi_align.config import GenerationConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.policy import HFPolicy
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.best_of_n import BestOfN, PlainSampling
from spi_align.serve import Servable, ServeConfig
from spi_align.serve.config import check_binding
from spi_align.serve.server import make_server
from spi_align.values.heads import HeadStack, ValueHead

MAX_TOKENS = 6


class VowelShare:
    """Stand-in reward: share of vowels in the response."""

    name = "vowels"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses]


class Gated:
    """Plain sampling that first waits until the test opens the gate (and says when it started waiting)."""

    name = "gate-sample"

    def __init__(self, policy: HFPolicy) -> None:
        self.inner = PlainSampling(policy)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationConfig | None = None) -> list[SearchResult]:
        self.waiting.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.run(prompts, cost, gen)


class TinyServable:
    """`Servable` over the existing searches on a tiny random policy (what `spi.load` gives for a real run)."""

    def __init__(self, policy: HFPolicy) -> None:
        self.policy = policy
        self.reward = VowelShare()
        head = ValueHead(policy.hidden_size)
        self.value = HeadStack([head], [1.0])
        self.gated = Gated(policy)
        self.built: list[tuple[str, int | None, int | None, int | None]] = []

    def available_methods(self) -> list[str]:
        return ["sample", "bon-4", "spi-1", "gate-sample"]

    def method(self, name: str, width: int | None = None, successors: int | None = None, chunk: int | None = None):
        self.built.append((name, width, successors, chunk))
        if name == "sample":
            return PlainSampling(self.policy)
        if name == "bon-4":
            return BestOfN(self.policy, self.reward, 4)
        if name == "spi-1":
            value = lambda rows: self.value(rows.hidden)  # noqa: E731
            return ChunkBeamSearch(self.policy, value, self.reward, width or 2, successors or 2, chunk or 3, name=name)
        if name == "gate-sample":
            return self.gated
        raise SpiError(f"unknown method '{name}'")


class Running:
    """A real uvicorn server on a free loopback port, run in a thread."""

    def __init__(self, servable: Servable, **settings: Any) -> None:
        self.servable = servable
        cfg = ServeConfig(port=0, log_level="warning", **settings)
        self.server = make_server(servable, cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = settings.get("api_key")

    def client(self, **options: Any) -> openai.OpenAI:
        options = {"max_retries": 0, "timeout": 60, **options}
        return openai.OpenAI(base_url=self.url + "/v1", api_key=options.pop("api_key", self.key or "none"), **options)

    def metrics(self) -> str:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.get(self.url + "/metrics", headers=headers).text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples (every label set) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def tiny_servable(tokenizer: Any, seed: int = 0) -> TinyServable:
    from conftest import make_tiny_causal_lm

    policy = HFPolicy(make_tiny_causal_lm(tokenizer), tokenizer, GenerationConfig(max_new_tokens=MAX_TOKENS), seed=seed)
    return TinyServable(policy)


@pytest.fixture(scope="module")
def running(_smol_tokenizer_once) -> Iterator[Running]:
    import copy

    server = Running(tiny_servable(copy.deepcopy(_smol_tokenizer_once)), max_wait_ms=5, max_tokens=64)
    yield server
    server.stop()


@pytest.fixture
def fresh(_smol_tokenizer_once) -> Iterator[Any]:
    """Start servers with their own tiny policy and settings; all stopped at the end."""
    import copy

    servers: list[Running] = []

    def start(**settings: Any) -> Running:
        servers.append(Running(tiny_servable(copy.deepcopy(_smol_tokenizer_once)), **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.servable.gated.gate.set()
        server.stop()


CHAT = [{"role": "user", "content": "Name a colour."}]


# ---- the OpenAI surface ----------------------------------------------------------------------------------------


def test_models_list_the_methods(running):
    client = running.client()
    assert [m.id for m in client.models.list()] == ["sample", "bon-4", "spi-1", "gate-sample"]
    assert client.models.retrieve("spi-1").id == "spi-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("spi-9")


def test_chat_usage_counts_every_generated_token(running):
    client = running.client()
    for model, candidates in (("sample", 1), ("bon-4", 4), ("spi-1", 4)):
        out = client.chat.completions.create(model=model, messages=CHAT, max_tokens=MAX_TOKENS, seed=11)
        assert out.object == "chat.completion" and out.model == model
        [choice] = out.choices
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason == "length"  # a tiny random model does not end by itself in 6 tokens
        # every candidate's tokens: best-of-4 samples 4 × 6; SPI-1 (W = K = 2, L = 3) extends 4 rows by 3, twice
        assert out.usage.completion_tokens == candidates * MAX_TOKENS
        prompt = running.servable.policy.format_prompt(Prompt("p", "Name a colour."))
        assert out.usage.prompt_tokens == len(
            running.servable.policy.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_conversation_goes_through_the_chat_template(running):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
    ]
    out = running.client().chat.completions.create(model="sample", messages=messages, max_tokens=2)
    assert out.choices[0].message.content is not None
    prompt = Prompt(
        "x", "Name a colour.", history=(("system", "You are terse."), ("user", "Hi."), ("assistant", "Hello."))
    )
    text = running.servable.policy.format_prompt(prompt)
    assert "You are terse." in text and "Hello." in text and text.rstrip().endswith("assistant")
    tokens = len(running.servable.policy.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert out.usage.prompt_tokens == tokens


def test_seed_makes_answers_repeatable_and_stop_cuts_them(running):
    client = running.client()
    ask = dict(model="spi-1", messages=CHAT, max_tokens=MAX_TOKENS)
    first = client.chat.completions.create(seed=5, **ask).choices[0].message.content
    assert client.chat.completions.create(seed=5, **ask).choices[0].message.content == first
    assert len(first) >= 4
    stop = first[2:4]
    cut = client.chat.completions.create(seed=5, stop=[stop], **ask).choices[0]
    assert cut.message.content == first[: first.index(stop)] and cut.finish_reason == "stop"


def test_n_answers_and_per_request_beam_shape(running):
    out = running.client().chat.completions.create(
        model="spi-1", messages=CHAT, max_tokens=4, n=3, extra_body={"width": 1, "successors": 3, "chunk": 2}
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    # each answer: W·K = 3 rows of 4 tokens (2 chunks of 2)
    assert out.usage.completion_tokens == 3 * 3 * 4
    assert ("spi-1", 1, 3, 2) in running.servable.built


def test_text_completions_one_or_several_prompts(running):
    client = running.client()
    one = client.completions.create(model="bon-4", prompt="Say hello.", max_tokens=3)
    assert one.object == "text_completion" and isinstance(one.choices[0].text, str)
    assert one.usage.completion_tokens == 4 * 3
    two = client.completions.create(model="sample", prompt=["Say hello.", "Count to three."], max_tokens=3, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and two.usage.completion_tokens == 4 * 3


def test_streaming_chat_matches_the_whole_answer(running):
    client = running.client()
    ask = dict(model="spi-1", messages=CHAT, max_tokens=MAX_TOKENS, seed=9)
    whole = client.chat.completions.create(**ask)
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_text_completion(running):
    chunks = list(running.client().completions.create(model="sample", prompt="Hi", max_tokens=2, stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "length"


def test_raw_stream_is_server_sent_events(running):
    body = {"model": "sample", "messages": CHAT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", running.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_health_and_metrics(running):
    health = httpx.get(running.url + "/health").json()
    assert health["status"] == "ok" and "spi-1" in health["models"]
    running.client().chat.completions.create(model="sample", messages=CHAT, max_tokens=2)
    text = running.metrics()
    for name in ("spi_requests_total", "spi_queue_depth", "spi_batch_prompts_count", "spi_tokens_generated_total",
                 "spi_request_latency_seconds_count", "spi_requests_in_flight"):  # fmt: skip
        assert name in text, name
    assert metric(text, "spi_tokens_generated_total") >= 2
    assert metric(text, 'spi_requests_total{endpoint="chat",model="sample",status="200"}') >= 1


# ---- bad requests: always a 4xx with OpenAI's error object --------------------------------------------------------


def post(running: Running, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(running.url + path, content=content, headers={"Content-Type": "application/json", **headers})


BAD_CHAT = [
    ({"messages": CHAT}, 400, "model"),  # missing model
    ({"model": "sample"}, 400, "messages"),  # missing messages
    ({"model": "sample", "messages": []}, 400, "messages"),  # empty messages
    ({"model": "sample", "messages": "hello"}, 400, "messages"),  # wrong type
    ({"model": "sample", "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"model": "sample", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "sample", "messages": CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": "sample", "messages": CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "sample", "messages": CHAT, "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": "sample", "messages": CHAT, "temperature": 3}, 400, "temperature"),
    ({"model": "sample", "messages": CHAT, "n": 0}, 400, "n"),
    ({"model": "sample", "messages": CHAT, "n": 100}, 400, "n"),
    ({"model": "sample", "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "sample", "messages": CHAT, "width": 1000}, 400, "width"),
    ({"model": "sample", "messages": CHAT, "logprobs": True}, 400, "logprobs"),
    ({"model": "sample", "messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "sample", "messages": CHAT, "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "sample", "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
    ({"model": "spi-9", "messages": CHAT}, 404, "model"),  # unknown model
    ([1, 2, 3], 400, None),  # not an object
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_CHAT)
def test_bad_chat_requests_are_4xx_with_an_error_object(running, body, status, param):
    response = post(running, "/v1/chat/completions", json.dumps(body))
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert "Traceback" not in response.text


def test_bad_completion_requests(running):
    for body, param in (
        ({"model": "sample"}, "prompt"),
        ({"model": "sample", "prompt": [1, 2, 3]}, "prompt"),  # token ids
        ({"model": "sample", "prompt": []}, "prompt"),
        ({"model": "sample", "prompt": "x", "echo": True}, "echo"),
        ({"model": "sample", "prompt": "x", "best_of": 3}, "best_of"),
    ):
        response = post(running, "/v1/completions", json.dumps(body))
        assert response.status_code == 400 and response.json()["error"]["param"] == param, body


def test_invalid_json_oversized_body_and_unknown_routes(running):
    response = post(running, "/v1/chat/completions", '{"model": "sample", "messages": [')
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    huge = json.dumps({"model": "sample", "messages": [{"role": "user", "content": "x" * 1_100_000}]})
    response = post(running, "/v1/chat/completions", huge)
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]
    response = httpx.get(running.url + "/v1/engines")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    response = httpx.get(running.url + "/v1/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_openai_client_sees_typed_errors(running):
    client = running.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="bon-99", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sample", messages=CHAT, max_tokens=100_000)
    assert err.value.body["param"] == "max_tokens"


# ---- keys, batching, back-pressure, time limits, disconnects, shutdown ---------------------------------------------


def test_api_key_is_required_and_compared(fresh):
    server = fresh(api_key="sk-right")
    assert server.client().chat.completions.create(model="sample", messages=CHAT, max_tokens=1).choices
    for key in ("sk-wrong", "sk-righ"):
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key=key).models.list()
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_public_address_needs_a_key():
    with pytest.raises(SpiError, match="API key"):
        check_binding(ServeConfig(host="0.0.0.0"))
    check_binding(ServeConfig(host="0.0.0.0", api_key="k"))
    check_binding(ServeConfig(host="::1"))


def test_concurrent_requests_share_one_search(fresh):
    server = fresh(max_batch=4, max_wait_ms=5000)  # a batch leaves as soon as it holds 4 prompts
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)

    async def burst() -> list[Any]:
        ask = dict(model="bon-4", messages=CHAT, max_tokens=3)
        return await asyncio.gather(*(client.chat.completions.create(**ask) for _ in range(4)))

    answers = asyncio.run(burst())
    text = server.metrics()
    assert metric(text, "spi_batch_requests_count") == 1 and metric(text, "spi_batch_requests_sum") == 4
    # the batch's tokens are billed to each request exactly: 4 samples × 3 tokens each
    assert [a.usage.completion_tokens for a in answers] == [12] * 4
    assert metric(text, "spi_tokens_generated_total") == 48


def in_thread(server: Running, model: str, out: list[Any], **ask: Any) -> threading.Thread:
    """Send one chat request from a thread; its answer (or error) lands in `out`."""

    def send() -> None:
        try:
            out.append(server.client().chat.completions.create(model=model, messages=CHAT, max_tokens=1, **ask))
        except openai.APIError as exc:
            out.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def wait_for(server: Running, name: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while metric(server.metrics(), name) < value:
        assert time.monotonic() < deadline, server.metrics()
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after(fresh):
    server = fresh(queue_size=1, max_batch=1, retry_after_s=7)
    gated = server.servable.gated
    out: list[Any] = []
    threads = [in_thread(server, "gate-sample", out)]
    assert gated.waiting.wait(10)  # the worker holds the first request
    threads.append(in_thread(server, "sample", out))  # the second waits in the queue
    wait_for(server, "spi_queue_depth", 1)
    with pytest.raises(openai.APIStatusError) as err:
        server.client().chat.completions.create(model="sample", messages=CHAT, max_tokens=1)
    assert err.value.status_code == 503 and err.value.response.headers["retry-after"] == "7"
    assert err.value.body["code"] == "server_busy"
    gated.gate.set()
    for thread in threads:
        thread.join(30)
    assert [o.choices[0].finish_reason for o in out] == ["length", "length"]


def test_time_limit_drops_a_request(fresh):
    server = fresh(request_timeout_s=0.5, max_batch=1)
    gated = server.servable.gated
    out: list[Any] = []
    held = in_thread(server, "gate-sample", out)
    assert gated.waiting.wait(10)
    with pytest.raises(openai.APIStatusError) as err:  # queued behind the held request until its limit
        server.client().chat.completions.create(model="sample", messages=CHAT, max_tokens=1)
    assert err.value.status_code == 504 and err.value.body["code"] == "timeout"
    held.join(30)
    assert isinstance(out[0], openai.APIStatusError) and out[0].status_code == 504  # the limit covers the search
    gated.gate.set()
    answer = server.client().chat.completions.create(model="sample", messages=CHAT, max_tokens=1)
    assert answer.choices[0].finish_reason == "length"
    text = server.metrics()
    assert metric(text, 'spi_requests_dropped_total{reason="timeout"}') == 2
    # the held search ran to its end; the expired request never reached one
    wait_for(server, 'spi_batch_prompts_count{model="gate-sample"}', 1)
    assert metric(server.metrics(), 'spi_batch_prompts_count{model="sample"}') == 1


def test_a_disconnected_client_is_dropped_from_its_batch(fresh):
    server = fresh(max_batch=4, max_wait_ms=0)
    gated = server.servable.gated
    out: list[Any] = []
    threads = [in_thread(server, "gate-sample", out)]
    assert gated.waiting.wait(10)
    with pytest.raises(httpx.ReadTimeout):  # this client gives up while its request waits
        body = {"model": "sample", "messages": CHAT, "max_tokens": 1}
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.3)
    wait_for(server, 'spi_requests_dropped_total{reason="disconnected"}', 1)
    threads += [in_thread(server, "sample", out) for _ in range(2)]  # same settings: the same batch
    wait_for(server, "spi_queue_depth", 3)
    gated.gate.set()
    for thread in threads:
        thread.join(30)
    assert [o.choices[0].finish_reason for o in out] == ["length"] * 3
    text = server.metrics()
    assert metric(text, 'spi_batch_prompts_count{model="sample"}') == 1
    assert metric(text, 'spi_batch_prompts_sum{model="sample"}') == 2  # the two live requests, not the dropped one
    assert metric(text, "spi_requests_in_flight") == 0


def test_sigterm_finishes_in_flight_requests_then_exits(fresh):
    server = fresh()
    gated = server.servable.gated
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(server.client().chat.completions.create(
        model="gate-sample", messages=CHAT, max_tokens=2)))  # fmt: skip
    thread.start()
    assert gated.waiting.wait(10)
    server.server.handle_exit(signal.SIGTERM, None)  # what uvicorn does on SIGTERM
    deadline = time.monotonic() + 10
    while True:  # stops accepting connections...
        try:
            httpx.get(server.url + "/health", timeout=1)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            break  # refused, or accepted into the backlog just before the socket closed and then reset
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.thread.is_alive()  # ...but waits for the request in flight
    gated.gate.set()
    thread.join(30)
    server.thread.join(30)
    assert not server.thread.is_alive()
    assert len(answers) == 1 and answers[0].choices[0].finish_reason == "length"


# ---- per-prompt token counts of the policy ------------------------------------------------------------------------


def test_policy_counts_tokens_per_prompt(tiny_causal_lm, smol_tokenizer):
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=5), seed=0)
    prompts = [Prompt("a", "Hi."), Prompt("b", "Say hello.")]
    cost = Cost(tokens_by_prompt=[0, 0])
    rows = policy.start(prompts, cost)
    rows = rows.select(rows.prompt_index.repeat_interleave(3))
    rows.done[:3] = True  # prompt 0's three rows are finished: only prompt 1's rows grow
    policy.extend(rows, 4, cost)
    assert cost.tokens_by_prompt == [0, 12] and cost.tokens_generated == 12
    rows.done[:] = False
    policy.extend(rows, 4, cost)  # every row may now take one more token (max_new_tokens = 5)
    assert cost.tokens_by_prompt == [3 * 4, 12 + 3] and sum(cost.tokens_by_prompt) == cost.tokens_generated
    assert "tokens_by_prompt" not in Cost().to_dict()


def test_search_counts_add_up_per_prompt(tiny_causal_lm, smol_tokenizer):
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=6), seed=0)
    value = HeadStack([ValueHead(policy.hidden_size)], [1.0])
    search = ChunkBeamSearch(policy, lambda rows: value(rows.hidden), VowelShare(), 2, 3, 2)
    cost = Cost(tokens_by_prompt=[0, 0, 0])
    search.run([Prompt(str(i), f"Question {i}.") for i in range(3)], cost)
    # W·K = 6 rows per prompt, 3 chunks of 2 tokens: pruned rows count too
    assert cost.tokens_by_prompt == [36, 36, 36] and cost.tokens_generated == 108
