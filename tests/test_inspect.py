"""`spi inspect`: the page of a tiny run (real searches on the tiny random policy, saved as `spi run` saves them)
holds the run's tables, one row per prompt with its outcome against best-of-N, and each prompt's recorded tree;
runs written before traces open with their candidates; bad input is one line and exit 2. `make_run` is shared
with the browser test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import make_policy
from mocks.scorers import CountScorer, vowel_share
from spi_align.cli import main
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.experiment.inspect_page import inspect_run
from spi_align.runs.files import atomic_write_json, atomic_write_jsonl
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.best_of_n import BestOfN, PlainSampling

PROMPTS = [Prompt(str(i), f"Question {i}: name a colour.") for i in range(5)]
PROMPTS[1] = Prompt("1", 'Quote </script><script>alert("x")</script> & <b>this</b>.')  # text, never markup


def make_run(folder: Path, model, tokenizer) -> Path:
    """A finished run's outputs on the tiny policy: sample, bon-4 and spi-1 (a recorded tree), evaluator scores
    (vowel share) and value metrics in results.json, as `spi run` writes them."""
    policy = make_policy(model, tokenizer, max_new_tokens=9)
    policy.eos_ids = torch.arange(len(tokenizer) // 12)  # some candidates end early
    reward = CountScorer()
    methods = {
        "sample": PlainSampling(policy),
        "bon-4": BestOfN(policy, reward, 4),
        "spi-1": ChunkBeamSearch(policy, lambda rows: rows.logprob, reward, width=2, successors=2, chunk=3),
    }
    folder.mkdir(parents=True)
    results = {}
    for name, search in methods.items():
        policy.reseed(1)
        cost = Cost()
        records = [r.to_record() for r in search.run(PROMPTS, cost)]
        atomic_write_jsonl(folder / f"eval-{name}.jsonl", records)
        texts = [r["response"] for r in records]
        results[name] = {
            "evaluator": vowel_share(PROMPTS, texts),
            "reward": reward.score(PROMPTS, texts),
            "cost": cost.to_dict(),
        }
    values = {"0": {"heldout_spearman_at_3": 0.25, "heldout_spearman_at_end": 0.5, "rollouts": 20}}
    atomic_write_json(folder / "results.json", {"results": results, "values": values})
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, _smol_tokenizer_once) -> Path:
    from conftest import make_tiny_causal_lm

    return make_run(
        tmp_path_factory.mktemp("inspect") / "tiny", make_tiny_causal_lm(_smol_tokenizer_once), _smol_tokenizer_once
    )


def page_data(path: Path) -> dict:
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(), re.S)
    assert found
    return json.loads(found.group(1))


def records(run: Path, method: str) -> list[dict]:
    return [json.loads(line) for line in (run / f"eval-{method}.jsonl").read_text().splitlines()]


def test_the_page_holds_tables_outcomes_and_trees(run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["inspect", str(run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    data = page_data(out)
    assert (data["method"], data["baseline"]) == ("spi-1", "bon-4")  # the last spi-k against best-of-N
    results = json.loads((run / "results.json").read_text())["results"]
    assert [row[0] for row in data["results"]["rows"]] == ["sample", "bon-4", "spi-1"]
    assert re.fullmatch(r"-?\d+\.\d{4} \[-?\d+\.\d{4}, -?\d+\.\d{4}\]", data["results"]["rows"][2][1])  # reward [CI]
    assert data["values"][0]["headers"] == ["round", "length", "heldout_spearman"]
    spi, bon = records(run, "spi-1"), records(run, "bon-4")
    assert [p["id"] for p in data["prompts"]] == [r["id"] for r in spi]
    for p, ours, theirs, r, b in zip(
        data["prompts"], results["spi-1"]["evaluator"], results["bon-4"]["evaluator"], spi, bon, strict=True
    ):
        expected = "win" if ours > theirs + 1e-6 else "loss" if ours < theirs - 1e-6 else "tie"
        assert (p["outcome"], p["judge"], p["base_judge"]) == (expected, ours, theirs)
        assert p["diff"] == pytest.approx(ours - theirs)
        assert p["tree"] == {k: v for k, v in r["trace"].items() if k != "tokens"}  # the record's, ids left out
        assert p["cands"] is None
        assert [c["text"] for c in p["base"]["list"]] == [c["text"] for c in b["candidates"]]
        assert b["candidates"][p["base"]["chosen"]]["text"] == b["response"]


def test_the_page_is_self_contained_and_prompt_text_stays_text(run, tmp_path):
    out = inspect_run(run, "spi-1", tmp_path / "page.html")
    text = out.read_text()
    assert set(re.findall(r"https?://[^\s\"'`]+", text)) <= {"http://www.w3.org/2000/svg"}  # no network
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|fetch\(", text)
    assert text.count("</script>") == 2  # the data's own text cannot close its script
    assert page_data(out)["prompts"][1]["prompt"] == PROMPTS[1].text


def test_runs_written_before_traces_open_with_their_candidates(run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for file in run.iterdir():
        lines = [json.loads(line) for line in file.read_text().splitlines()] if file.suffix == ".jsonl" else None
        if lines is None:
            (old / file.name).write_bytes(file.read_bytes())
        else:
            atomic_write_jsonl(old / file.name, [{k: v for k, v in r.items() if k != "trace"} for r in lines])
    data = page_data(inspect_run(old))
    for p, r in zip(data["prompts"], records(run, "spi-1"), strict=True):
        assert p["tree"] is None and len(p["cands"]["list"]) == len(r["candidates"])
        assert p["cands"]["list"][p["cands"]["chosen"]]["text"] == r["response"]
    (old / "results.json").unlink()  # an unfinished report: prompts and trees only
    data = page_data(inspect_run(old, "bon-4"))
    assert data["results"] is None and data["baseline"] is None and len(data["prompts"]) == len(PROMPTS)


def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys):
    for argv in (
        ["inspect", str(tmp_path / "missing")],
        ["inspect", str(tmp_path)],
        ["inspect", str(run), "--method", "spi-9"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("spi: error:"), err
    with pytest.raises(SpiError, match="is a folder"):
        inspect_run(run, out=tmp_path)
