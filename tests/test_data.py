"""Prompt and response loading: every file format, every error as one SpiError line, the default split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spi_align.config import DataConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.prompts import heldout_prompts, load_prompts, load_responses

ROWS = [
    {"id": "q1", "instruction": "Name a colour.", "output": "Blue."},
    {"id": "q2", "instruction": "Name a fruit.", "output": None},
]
EXPECTED = [Prompt("q1", "Name a colour.", "Blue."), Prompt("q2", "Name a fruit.", None)]


def write(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def prompts_of(path: Path, **kw) -> list[Prompt]:
    return load_prompts(DataConfig(prompts=str(path), **kw))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_gives_the_same_prompts(tmp_path, suffix):
    assert prompts_of(write(tmp_path / f"p{suffix}", ROWS)) == EXPECTED


def test_columns_are_found_by_priority_and_ids_default_to_row_index(tmp_path):
    rows = [{"question": "q?", "text": "t", "answer": "a"}, {"question": "r?", "text": "u", "answer": "b"}]
    got = prompts_of(write(tmp_path / "p.jsonl", rows))
    assert got == [Prompt("0", "t", "a"), Prompt("1", "u", "b")]  # 'text' comes before 'question'


def test_limit_keeps_the_first_prompts(tmp_path):
    assert prompts_of(write(tmp_path / "p.csv", ROWS), limit=1) == EXPECTED[:1]


def test_json_may_be_a_list_with_ragged_rows(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "reference": "r", "extra": [1, 2]}]))
    assert prompts_of(path) == [Prompt("0", "a"), Prompt("1", "b", "r")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "not found"),
        ("p.txt", "hello", "unsupported file type '.txt'"),
        ("p.jsonl", "", "file is empty"),
        ("p.json", "[]", "no rows"),
        ("p.csv", "prompt,reference\n", "no rows"),
        ("p.jsonl", '{"title": "x", "body": "y"}\n', "no prompt column .*it has title, body"),
        ("p.jsonl", '{"prompt": "x"}\n{"prompt": "  "}\n', "empty prompt in row 1"),
        ("p.jsonl", '{"prompt": "x"}\n{"prompt": null}\n', "empty prompt in row 1"),
        ("p.jsonl", '{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n', "id '1' appears twice"),
        ("p.json", "{not json", "cannot read it"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n{"prompt": "c"}\n', r"p\.jsonl:2: not a JSON record"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpiError, match=message) as err:
        prompts_of(path)
    assert "\n" not in str(err.value)


def test_responses_file(tmp_path):
    rows = [{"prompt": "p", "response": "r", "reference": "ref"}, {"prompt": "q", "response": None}]
    got = load_responses(write(tmp_path / "r.parquet", rows))
    assert got == [(Prompt("0", "p", "ref"), "r"), (Prompt("1", "q", None), "")]


def test_responses_file_needs_a_response_column(tmp_path):
    with pytest.raises(SpiError, match="no 'response' column"):
        load_responses(write(tmp_path / "r.jsonl", ROWS))


def test_default_split_sizes_and_disjointness():
    train = load_prompts(DataConfig(split="train"))
    evals = load_prompts(DataConfig(split="eval"))
    every = load_prompts(DataConfig(split="all"))
    assert (len(train), len(evals), len(every)) == (605, 200, 805)
    assert not {p.id for p in train} & {p.id for p in evals}
    assert {p.id for p in train} | {p.id for p in evals} == {p.id for p in every}
    assert all(p.text and p.reference for p in every)
    assert load_prompts(DataConfig(split="eval")) == evals  # fixed


def test_default_limit_takes_the_first_prompts_of_the_split():
    evals = load_prompts(DataConfig(split="eval"))
    assert load_prompts(DataConfig(split="eval", limit=5)) == evals[:5]


def test_a_prompts_heldout_side_never_depends_on_the_other_prompts():
    ids = [f"p{i}" for i in range(64)]
    full = heldout_prompts(ids, seed=0)
    for dropped in ids:
        rest = [i for i in ids if i != dropped]
        assert heldout_prompts(rest, seed=0) == full - {dropped}, dropped
    assert heldout_prompts(ids[:40], seed=0) == full & set(ids[:40])
    assert heldout_prompts(ids, seed=1) != full  # the seed draws anew


def test_about_a_fifth_is_held_out_and_splits_draw_independently():
    ids = [str(i) for i in range(5000)]
    held = heldout_prompts(ids, seed=3)
    assert 0.18 < len(held) / len(ids) < 0.22
    inner = heldout_prompts(ids, seed=3, split="choice")
    assert 0.18 < len(inner) / len(ids) < 0.22
    assert 0.02 < len(held & inner) / len(ids) < 0.06  # independent: about a fifth of a fifth
    assert heldout_prompts(ids + ids[:10], seed=3) == held  # repeated ids count once


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_small_sets_keep_a_prompt_on_each_side(n):
    for seed in range(30):
        ids = [f"q{i}" for i in range(n)]
        held = heldout_prompts(ids, seed)
        assert held <= set(ids) and len(held) >= 1
        if n >= 2:
            assert len(held) < n
    assert heldout_prompts([], seed=0) == set()
