"""The pairwise LLM judge against a stand-in OpenAI-compatible server on loopback, started by each test."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spi_align.cli import main
from spi_align.core.errors import SpiError
from spi_align.evaluation.judge import (
    ChatClient,
    JudgeConfig,
    Pair,
    PairwiseJudge,
    Tally,
    combine,
    parse_verdict,
    resolve_endpoint,
)
from spi_align.evaluation.judge_run import judge_run

Answer = tuple[int, bytes] | tuple[int, bytes, dict[str, str]]
"""(status, body) or (status, body, extra response headers)."""


def chat(content: str) -> Answer:
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def verdict(letter: str) -> Answer:
    return chat(f"**Comparison:** one is better.\n\n**Preferred:** {letter}")


def responses(body: dict[str, Any]) -> tuple[str, str, str]:
    """Instruction, Response A and Response B of a judge request."""
    user = body["messages"][-1]["content"]
    instruction = user.split("**Instruction:**\n\n", 1)[1].split("\n\n**Response A:**", 1)[0]
    a = user.split("**Response A:**\n\n", 1)[1].split("\n\n**Response B:**", 1)[0]
    b = user.split("**Response B:**\n\n", 1)[1].split("\n\nFIRST", 1)[0]
    return instruction, a, b


def fair(body: dict[str, Any]) -> Answer:
    """A judge that prefers whichever response says GOOD."""
    _, a, _ = responses(body)
    return verdict("A" if "GOOD" in a else "B")


class StandIn:
    """A chat-completions server on 127.0.0.1 that answers with `answer(body)` and records every request."""

    def __init__(self, answer: Callable[[dict[str, Any]], Answer]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        """When each request arrived (time.monotonic)."""
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.times.append(time.monotonic())
                stand_in.requests.append({"path": self.path, **body})
                stand_in.headers.append({k.lower(): v for k, v in self.headers.items()})  # names are case-blind
                status, payload, *extra = stand_in.answer(body)
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stand_in() -> Iterator[Callable[[Callable[[dict[str, Any]], Answer]], StandIn]]:
    servers: list[StandIn] = []

    def start(answer: Callable[[dict[str, Any]], Answer]) -> StandIn:
        servers.append(StandIn(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch):
    for name in ("SPI_JUDGE_BASE_URL", "SPI_JUDGE_MODEL", "SPI_JUDGE_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def make_judge(server_or_url: StandIn | str, **options: Any) -> PairwiseJudge:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    cfg = JudgeConfig(base_url=url, model="stand-in", backoff=0, concurrency=1, **options)
    return PairwiseJudge(ChatClient(resolve_endpoint(cfg), cfg))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Comparison:** A is clearer.\n\n**Preferred:** A", "A"),
        ('**Comparison:** B wins.\n**Preferred:** "B"', "B"),
        ("Comparison: x\nPreferred: **B**", "B"),
        ("preferred: a", "A"),
        ("Preferred: A\n...on reflection...\nPreferred: B", "B"),
        ("Both are fine, I'd pick\nB", "B"),
        ("Response A", "A"),
        ("I cannot decide between them.", None),
        ("**Preferred:** both", None),
        ("", None),
        # real judges name the response rather than the letter alone
        ("**Comparison:** B is more accurate.\n\n**Preferred:** Response B", "B"),
        ("**Preferred: Response A**", "A"),
        ('Preferred: "Response B".', "B"),
        ("**Preferred:** Response A\n\nOn reflection... **Preferred:** Response B", "B"),
        ("**Preferred:** Response Both", None),
        ("**Preferred:** Responses A and B are equal", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_combine_orders():
    assert combine("ours", "ours") == "win"
    assert combine("theirs", "theirs") == "loss"
    assert combine("ours", "theirs") == combine("theirs", "ours") == "tie"
    assert combine(None, "ours") == combine("ours", None) == "malformed"


def test_both_orders_asked_and_agreement_is_a_win(stand_in, monkeypatch):
    server = stand_in(fair)
    monkeypatch.setenv("SPI_JUDGE_API_KEY", "sk-test")
    judgement = make_judge(server).judge_pair(Pair("0", "Name a colour.", "GOOD: blue", "meh"))
    assert judgement.outcome == "win" and judgement.malformed_answers == 0
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    first, second = (responses(r) for r in server.requests)
    assert first == ("Name a colour.", "GOOD: blue", "meh") and second == ("Name a colour.", "meh", "GOOD: blue")
    assert all(r["model"] == "stand-in" and r["messages"][0]["role"] == "system" for r in server.requests)
    assert "Which of the following responses" in server.requests[0]["messages"][0]["content"]
    assert all(h["authorization"] == "Bearer sk-test" for h in server.headers)


def test_loss_when_both_orders_prefer_theirs(stand_in):
    judgement = make_judge(stand_in(fair)).judge_pair(Pair("0", "q", "meh", "GOOD"))
    assert (judgement.ours_first, judgement.ours_second, judgement.outcome) == ("theirs", "theirs", "loss")


def test_no_key_no_authorization_header(stand_in):
    server = stand_in(fair)
    assert make_judge(server).judge_pair(Pair("0", "q", "GOOD", "meh")).outcome == "win"
    assert len(server.headers) == 2 and all("authorization" not in h for h in server.headers)


def test_position_bias_splits_into_a_tie(stand_in):
    judgement = make_judge(stand_in(lambda body: verdict("A"))).judge_pair(Pair("0", "q", "GOOD", "meh"))
    assert (judgement.ours_first, judgement.ours_second, judgement.outcome) == ("ours", "theirs", "tie")


def test_identical_responses_tie_without_asking(stand_in):
    server = stand_in(fair)
    judgement = make_judge(server).judge_pair(Pair("0", "q", "same words", "same words "))
    assert judgement.outcome == "tie" and judgement.identical and server.requests == []


def test_malformed_answers_are_counted_not_fatal(stand_in):
    seen: dict[str, int] = {}

    def answer(body: dict[str, Any]) -> Answer:
        instruction, _, _ = responses(body)
        key = json.dumps(body["messages"])
        seen[key] = seen.get(key, 0) + 1
        if instruction == "nonjson":
            return 200, b"<html>oops</html>"
        if instruction == "nochoices":
            return 200, json.dumps({"error": {"message": "overloaded"}}).encode()
        if instruction == "noverdict":
            return chat("Both responses have merits.")
        if instruction == "flaky" and seen[key] == 1:  # garbage once, then a good answer on the retry
            return 200, b"{"
        return fair(body)

    judge = make_judge(stand_in(answer), retries=1)
    names = ["nonjson", "ok-1", "nochoices", "ok-2", "noverdict", "flaky"]
    pairs = [Pair(str(i), name, "GOOD", "meh") for i, name in enumerate(names)]
    judgements = judge.judge_many(pairs)
    outcomes = {names[int(j.id)]: (j.outcome, j.malformed_answers) for j in judgements}
    assert outcomes == {
        "nonjson": ("malformed", 4),  # two orders × (first try + one retry)
        "ok-1": ("win", 0),
        "nochoices": ("malformed", 4),
        "ok-2": ("win", 0),
        "noverdict": ("malformed", 4),
        "flaky": ("win", 2),  # each order's first answer was garbage, its retry was fine
    }
    tally = Tally()
    for j in judgements:
        tally.add(j)
    assert (tally.win, tally.tie, tally.loss, tally.malformed, tally.malformed_answers) == (3, 0, 0, 3, 14)
    assert tally.win_half_tie == 1.0


def test_unreachable_endpoint_is_one_line_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SpiError) as err:
        make_judge(url, retries=1).judge_pair(Pair("0", "q", "GOOD", "meh"))
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "unreachable after 2 attempts" in message and url in message


def test_server_errors_are_retried_a_bounded_number_of_times(stand_in):
    server = stand_in(lambda body: (503, b'{"error": "busy"}'))
    with pytest.raises(SpiError, match="unreachable after 3 attempts .*HTTP 503"):
        make_judge(server, retries=2).judge_pair(Pair("0", "q", "GOOD", "meh"))
    assert len(server.requests) == 3


def test_rate_limit_waits_as_long_as_retry_after_asks(stand_in):
    answers = iter([(429, b'{"error": "slow down"}', {"Retry-After": "1"})])
    server = stand_in(lambda body: next(answers, None) or fair(body))
    judgement = make_judge(server, retries=1).judge_pair(Pair("0", "q", "GOOD", "meh"))  # backoff=0 of its own
    assert judgement.outcome == "win" and judgement.malformed_answers == 0
    assert len(server.requests) == 3  # the 429, its retry, the other order
    assert server.times[1] - server.times[0] >= 0.95  # the retry came a second later, as the server asked


def test_timeout_counts_as_unreachable(stand_in):
    release = threading.Event()

    def slow(body: dict[str, Any]) -> Answer:
        release.wait(2)
        return fair(body)

    server = stand_in(slow)
    try:
        with pytest.raises(SpiError, match="unreachable after 1 attempts"):
            make_judge(server, retries=0, timeout=0.2).judge_pair(Pair("0", "q", "GOOD", "meh"))
    finally:
        release.set()


def test_garbage_in_a_row_stops_with_one_line(stand_in):
    server = stand_in(lambda body: (200, b"not json at all"))
    judge = make_judge(server, retries=0, max_malformed_streak=3)
    with pytest.raises(SpiError, match="answered garbage 3 times in a row") as err:
        judge.judge_many([Pair(str(i), "q", "GOOD", "meh") for i in range(10)])
    assert len(str(err.value).splitlines()) == 1
    assert len(server.requests) == 3


def test_rejected_key_is_not_retried(stand_in):
    server = stand_in(lambda body: (401, b'{"error": {"message": "Incorrect API key provided"}}'))
    with pytest.raises(SpiError, match="refused the API key .HTTP 401"):
        make_judge(server, retries=3).judge_pair(Pair("0", "q", "GOOD", "meh"))
    assert len(server.requests) == 1


def test_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("SPI_JUDGE_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("SPI_JUDGE_MODEL", "judge-x")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    endpoint = resolve_endpoint(JudgeConfig())
    assert endpoint.url == "http://127.0.0.1:9/v1/chat/completions"
    assert (endpoint.model, endpoint.api_key) == ("judge-x", "sk-openai")
    assert "sk-openai" not in repr(endpoint)
    assert resolve_endpoint(JudgeConfig(model="m", base_url="https://h/v1")).base_url == "https://h/v1"
    with pytest.raises(SpiError, match="MY_KEY"):
        resolve_endpoint(JudgeConfig(api_key_env="MY_KEY"))
    with pytest.raises(SpiError, match="http"):
        resolve_endpoint(JudgeConfig(base_url="127.0.0.1:9"))


def write_method(run: Path, method: str, answers: list[str]) -> None:
    lines = [
        json.dumps({"id": str(i), "prompt": f"instruction {i}", "response": a, "score": 0.0, "candidates": []})
        for i, a in enumerate(answers)
    ]
    (run / f"eval-{method}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    write_method(run, "sample", ["meh", "meh", "meh", "meh"])
    write_method(run, "bon-4", ["meh", "GOOD b", "x", "same"])
    write_method(run, "spi-1", ["GOOD a", "meh", "GOOD c", "same"])
    (run / "results.json").write_text(json.dumps({"results": {"sample": {}, "bon-4": {}, "spi-1": {}}}))
    return run


def test_judge_command_writes_the_table_and_resumes(stand_in, finished_run, capsys):
    server = stand_in(fair)
    argv = ["judge", str(finished_run), "--against", "bon-4", f"base_url={server.base_url}", "model=stand-in",
            "backoff=0"]  # fmt: skip
    assert main(argv) == 0
    table = (finished_run / "judge" / "stand-in" / "table.md").read_text()
    results = json.loads((finished_run / "judge" / "stand-in" / "results.json").read_text())
    spi, sample = results["methods"]["spi-1"], results["methods"]["sample"]
    assert (spi["win"], spi["tie"], spi["loss"], spi["identical"], spi["malformed"]) == (2, 1, 1, 1, 0)
    assert spi["win_half_tie"] == pytest.approx(2.5 / 4)
    # sample: 'meh' vs 'meh' is identical, two pairs without GOOD split into ties, one loss
    assert (sample["win"], sample["tie"], sample["loss"], sample["identical"]) == (0, 3, 1, 1)
    assert "| spi-1 | 2 | 1 | 1 | 62.5% | 0 | 0 | 1 |" in table
    asked = len(server.requests)
    assert asked == 2 * (3 + 3)  # both orders of every non-identical pair
    assert main(argv) == 0 and len(server.requests) == asked  # saved judgements are reused


def test_judge_command_unreachable_is_one_line(finished_run, capsys):
    argv = ["judge", str(finished_run), f"base_url=http://127.0.0.1:{free_port()}/v1", "retries=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spi: error: judge endpoint") and "unreachable" in err


def test_judge_run_needs_a_known_baseline(finished_run):
    with pytest.raises(SpiError, match="no method bon-16"):
        judge_run(finished_run, JudgeConfig(base_url="http://127.0.0.1:9/v1"), against="bon-16")
    with pytest.raises(SpiError, match="not found"):
        judge_run(finished_run / "nope", JudgeConfig())
