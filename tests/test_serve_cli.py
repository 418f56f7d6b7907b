"""`spi serve RUN_DIR` end to end: a saved improved policy (tiny random model, random value head, stand-in reward)
loaded by `spi.load` in a child process, driven by the load generator (sequential, concurrent, then SIGTERM under
load: every accepted request answered, exit status 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.config import Config, build_config
from spi_align.serve.load import LoadSpec, run_load

SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def metric(text: str, sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " "))


@pytest.fixture
def saved_policy(tmp_path, tiny_model_dir) -> Path:
    from spi_align.policy import load_policy
    from spi_align.scoring import make_scorer
    from spi_align.spi import ImprovedPolicy
    from spi_align.values.heads import ValueHead
    from spi_align.values.kinds import make_value_kind

    overrides = [f"policy.model={tiny_model_dir}", f"reward={SCORER}", "spi.rounds=1", "spi.width=2",
                 "spi.successors=2", "spi.chunk=2", "generation.max_new_tokens=4"]  # fmt: skip
    cfg = build_config(Config, None, overrides)
    policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
    kind = make_value_kind(policy, cfg.spi, cfg.policy.model, cfg.seed)
    improved = ImprovedPolicy(policy, make_scorer(cfg.reward), kind, [ValueHead(policy.hidden_size)], cfg)
    assert improved.available_methods() == ["sample", "bon-4", "spi-1"]
    return improved.save(tmp_path / "improved")


def test_spi_serve_under_load_then_sigterm(saved_policy, tmp_path):
    spec = LoadSpec(
        run=str(saved_policy),
        models=["spi-1", "bon-4"],
        clients=8,
        requests=16,
        sequential=3,
        max_tokens=4,
        sigterm_after_s=1.0,
        prompts=["Name a colour.", "Say hello."],
        server_args=["max_wait_ms=20", "max_batch=8"],
        time_limit_s=60,
    )
    report = run_load(spec, tmp_path / "load")
    for phase in report["phases"]:
        assert phase["errors"] == {} and phase["ok"] == phase["sent"], phase
    concurrent = [p for p in report["phases"] if p["mode"] == "concurrent"]
    assert [p["ok"] for p in concurrent] == [16, 16]
    assert set(report["speedup"]) == {"spi-1", "bon-4"} and report["peak_rss_mb"] > 0
    # the usage billed to the clients adds up to every token the server's searches generated, per method
    for model in ("spi-1", "bon-4"):
        billed = sum(p["completion_tokens"] for p in report["phases"] if p["model"] == model)
        assert billed == metric(report["metrics"], f'spi_tokens_generated_total{{model="{model}"}}') > 0
        assert billed <= (1 + 3 + 16) * 4 * 4  # at most W·K = 4 rows × 4 tokens per answer
    term = report["sigterm"]
    assert term["ok"] > 0  # answers were in flight or queued when the signal came
    assert term["lost"] == 0 and term["server_accepted"] == term["server_answered"] == term["client_answers_total"]
    # after the signal: connections refused (or reset before the server read them), never an HTTP error
    assert not any(name.startswith("HTTP") for name in term["errors"]) and term["exit_code"] == 0
    saved = json.loads((tmp_path / "load" / "load.json").read_text())
    assert saved["sigterm"]["lost"] == 0
    assert "| spi-1 | concurrent | 8 | 16 | 16 | 0 |" in (tmp_path / "load" / "report.md").read_text()


def test_spi_serve_refuses_a_public_address_without_a_key(saved_policy, capsys, monkeypatch):
    monkeypatch.delenv("SPI_API_KEY", raising=False)
    assert main(["serve", str(saved_policy), "--host", "0.0.0.0"]) == 2
    assert "API key" in capsys.readouterr().err
    assert main(["serve", str(saved_policy), "max_batch=0"]) == 2
    assert "max_batch" in capsys.readouterr().err
