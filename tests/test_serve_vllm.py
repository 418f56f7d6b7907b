"""`spi serve` on a run made with `policy.backend=vllm`: the run folder is loaded by `spi.load` as `spi serve` loads
it (the generation engine started, the reward head and the anchored value on the state engine's states), served by
the real uvicorn in a thread (test_serve's `Running`) and called with the real `openai` client: the same API as on
transformers (models, chat and text completions, streaming, usage, seeds, the record on request).

The run is the default recipe's shape (reward: train, value: anchored) on the tiny vLLM policy of tests/test_vllm.py,
its reward head and value head random: the server's behaviour does not depend on their weights. Skipped with the
reason when vLLM is not installed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from spi_align.config import Config, build_config
from spi_align.core.records import Prompt
from test_serve import CHAT, Running
from test_vllm import LIVE, VLLM_MISSING, engine_overrides, stop_engine, tiny_model_dir  # noqa: F401 (a fixture)

MAX_TOKENS = 8
CHAT_PROMPT = Prompt("p", CHAT[0]["content"])


def vllm_run(model_dir: Path, folder: Path) -> Path:
    """A saved improved policy as `spi run` leaves it on vLLM (reward: train, value: anchored), written from a
    transformers twin of the policy: the folder holds settings and heads only, and names the vLLM backend."""
    from spi_align.policy import HFPolicy
    from spi_align.scoring.reward_model import RewardModel
    from spi_align.scoring.row_reward import PolicyHeadReward
    from spi_align.spi import ImprovedPolicy
    from spi_align.values.anchored import AnchoredValue
    from spi_align.values.heads import ValueHead
    from spi_align.values.kinds import make_value_kind

    overrides = [
        *engine_overrides(model_dir),
        "reward=train",
        "spi.value=anchored",
        "spi.rounds=1",
        "spi.width=2",
        "spi.successors=2",
        "spi.chunk=4",
        f"generation.max_new_tokens={MAX_TOKENS}",
    ]
    cfg = build_config(Config, None, overrides)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = HFPolicy(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, cfg.generation)
    torch.manual_seed(0)
    reward = PolicyHeadReward(RewardModel(policy.backbone, tokenizer, str(model_dir)), policy)
    hidden = policy.hidden_size
    value = AnchoredValue(ValueHead(hidden).eval(), [4], [0.5])
    kind = make_value_kind(policy, cfg.spi, cfg.policy.model, cfg.seed)
    return ImprovedPolicy(policy, reward, kind, [value], cfg).save(folder)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    pytest.importorskip("vllm", reason=VLLM_MISSING)
    return vllm_run(tiny_model_dir, tmp_path_factory.mktemp("vllm-run") / "improved")


@pytest.fixture(scope="module")
def served(run_dir: Path) -> Iterator[Running]:
    from vllm.distributed import cleanup_dist_env_and_memory

    from spi_align.policy.vllm import VLLMStatePolicy
    from spi_align.spi import load

    for policy in list(LIVE):  # one engine at a time
        stop_engine(policy)
    improved = load(run_dir)
    assert isinstance(improved.policy, VLLMStatePolicy)
    try:
        server = Running(improved, max_wait_ms=20, max_tokens=64)
        try:
            yield server
        finally:
            server.stop()
    finally:
        policy = improved.policy
        del policy.llm
        policy.states.llm = None
        del improved, policy
        gc.collect()
        cleanup_dist_env_and_memory()


def test_a_vllm_run_is_served_with_the_same_api(served: Running) -> None:
    client = served.client()
    assert [m.id for m in client.models.list()] == ["sample", "bon-4", "spi-1"]
    for model, candidates in (("sample", 1), ("bon-4", 4), ("spi-1", 4)):
        out = client.chat.completions.create(model=model, messages=CHAT, max_tokens=MAX_TOKENS)
        [choice] = out.choices
        assert out.model == model and choice.message.role == "assistant" and choice.message.content
        assert choice.finish_reason in ("stop", "length")
        assert 0 < out.usage.completion_tokens <= candidates * MAX_TOKENS
        assert out.usage.prompt_tokens == len(served.servable.policy.prompt_ids([CHAT_PROMPT])[0])
    # the anchored search read the policy's states from the state engine; the reward head scored finished rows
    assert served.servable.policy.states.prefix_cache.requests > 0


def test_text_completions_streams_and_concurrent_requests(served: Running) -> None:
    import concurrent.futures

    client = served.client()
    text = client.completions.create(model="spi-1", prompt=["Say hello.", "Name a colour."], max_tokens=4)
    assert [c.index for c in text.choices] == [0, 1] and all(c.text is not None for c in text.choices)
    stream = client.chat.completions.create(
        model="spi-1", messages=CHAT, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    def ask(i: int) -> Any:
        return client.chat.completions.create(
            model="spi-1", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # batched together by the server
        answers = list(pool.map(ask, range(4)))
    assert all(a.choices[0].message.content is not None for a in answers)


def test_seeded_answers_repeat_and_the_record_comes_on_request(served: Running) -> None:
    client = served.client()
    ask = dict(model="spi-1", messages=CHAT, max_tokens=MAX_TOKENS, seed=5)
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first
    traced = client.chat.completions.create(extra_body={"return_trace": True}, **ask).choices[0]
    assert traced.message.content == first
    record = traced.model_extra["trace"]
    assert len(record["candidates"]) >= 4 and all(c["score"] is not None for c in record["candidates"])


def test_spi_serve_on_a_vllm_run_under_load_then_sigterm(run_dir: Path, tmp_path: Path) -> None:
    """`spi serve RUN` in a child process (its engines in that process), driven by the load generator: every request
    answered, then a SIGTERM under load drains: every accepted request answered, exit status 0."""
    from spi_align.serve.load import LoadSpec, run_load

    spec = LoadSpec(
        run=str(run_dir),
        models=["spi-1", "bon-4"],
        clients=8,
        requests=16,
        sequential=3,
        max_tokens=MAX_TOKENS,
        sigterm_after_s=1.0,
        sigterm_clients=4,
        prompts=["Name a colour.", "Say hello."],
        server_args=["max_wait_ms=20", "max_batch=8"],
        time_limit_s=120,
    )
    report = run_load(spec, tmp_path / "load")
    for phase in report["phases"]:
        assert phase["errors"] == {} and phase["ok"] == phase["sent"] > 0, phase
    term = report["sigterm"]
    assert term["lost"] == 0 and term["server_accepted"] == term["server_answered"] == term["client_answers_total"]
    assert not any(name.startswith("HTTP") for name in term["errors"]) and term["exit_code"] == 0
