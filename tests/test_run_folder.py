"""Run folders that survive crashes and concurrent commands (`resumable.py`, `rundir.py`, `files.py`): a batch and
its cost always agree after a crash between their writes, a torn last line does not block a resume, old folders
still resume; a rerun is compared with the run's settings, not its config text. No model runs here: a stand-in
search answers each prompt deterministically and bills fixed costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import yaml

from spi_align.cli import main
from spi_align.config import Config
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.runs.resumable import run_method
from spi_align.runs.rundir import RunDir

PROMPTS = [Prompt(str(i), f"Question {i}") for i in range(5)]
BATCH = 2  # 5 prompts: batches of 2, 2 and 1
TOKENS = 3  # tokens billed per prompt


class Interrupted(Exception):
    pass


class Answer:
    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt

    def to_record(self) -> dict:
        return {"id": self.prompt.id, "prompt": self.prompt.text, "response": f"answer {self.prompt.id}"}


class Echo:
    """Answers each prompt with its id; bills TOKENS tokens and one reward call per prompt; can stop after
    `batches` batches, as by Ctrl-C or a lost machine."""

    name = "echo"

    def __init__(self, batches: int | None = None) -> None:
        self.batches = batches

    def run(self, prompts, cost):
        if self.batches == 0:
            raise Interrupted
        if self.batches is not None:
            self.batches -= 1
        cost.tokens_generated += TOKENS * len(prompts)
        cost.reward_calls += len(prompts)
        return [Answer(p) for p in prompts]


def whole_run(tmp_path):
    run = RunDir(tmp_path, "whole")
    records, cost = run_method(run, "m", Echo(), PROMPTS, BATCH)
    assert cost.tokens_generated == TOKENS * len(PROMPTS)
    return run, records, cost


def test_a_crash_between_a_batch_and_its_cost_runs_that_batch_again_so_the_cost_is_whole(tmp_path, monkeypatch):
    whole, records, cost = whole_run(tmp_path)
    cut = RunDir(tmp_path, "cut")
    saves = {"n": 0}
    original = RunDir.write_json

    def crash_on_second_cost(self, name, data):
        if name == "m.cost.json":
            saves["n"] += 1
            if saves["n"] == 2:  # the second batch's records are written, its cost is not
                raise Interrupted
        return original(self, name, data)

    monkeypatch.setattr(RunDir, "write_json", crash_on_second_cost)
    with pytest.raises(Interrupted):
        run_method(cut, "m", Echo(), PROMPTS, BATCH)
    monkeypatch.setattr(RunDir, "write_json", original)

    resumed, resumed_cost = run_method(cut, "m", Echo(), PROMPTS, BATCH)
    assert resumed == records
    assert cut.file("m.jsonl").read_text() == whole.file("m.jsonl").read_text()  # the dropped batch is not doubled
    assert (resumed_cost.tokens_generated, resumed_cost.reward_calls) == (cost.tokens_generated, cost.reward_calls)
    assert json.loads(cut.file("m.cost.json").read_text())["records"] == len(PROMPTS)


def test_a_torn_last_line_is_dropped_and_the_run_resumes_to_the_whole_file(tmp_path):
    whole, records, cost = whole_run(tmp_path)
    cut = RunDir(tmp_path, "cut")
    with pytest.raises(Interrupted):
        run_method(cut, "m", Echo(batches=1), PROMPTS, BATCH)
    with cut.file("m.jsonl").open("a") as handle:  # a crash in the middle of the next append
        handle.write('{"id": "2", "prompt": "Quest')

    resumed, resumed_cost = run_method(cut, "m", Echo(), PROMPTS, BATCH)
    assert resumed == records and resumed_cost.tokens_generated == cost.tokens_generated
    assert cut.file("m.jsonl").read_text() == whole.file("m.jsonl").read_text()


def test_a_resume_appends_in_place_and_leaves_a_hard_linked_copy_alone(tmp_path):
    whole, records, _ = whole_run(tmp_path)
    cut = RunDir(tmp_path, "cut")
    with pytest.raises(Interrupted):
        run_method(cut, "m", Echo(batches=1), PROMPTS, BATCH)
    one_batch = cut.file("m.jsonl").read_text()
    inode = cut.file("m.jsonl").stat().st_ino
    with pytest.raises(Interrupted):
        run_method(cut, "m", Echo(batches=1), PROMPTS, BATCH)
    assert cut.file("m.jsonl").stat().st_ino == inode  # the second batch was appended, the first not rewritten

    linked = RunDir(tmp_path, "linked")  # a sweep shares a partial method file with another run by a hard link
    linked.path.mkdir()
    os.link(cut.file("m.jsonl"), linked.file("m.jsonl"))
    os.link(cut.file("m.cost.json"), linked.file("m.cost.json"))
    two_batches = cut.file("m.jsonl").read_text()
    assert two_batches.startswith(one_batch)
    resumed, _ = run_method(linked, "m", Echo(), PROMPTS, BATCH)
    assert resumed == records
    assert cut.file("m.jsonl").read_text() == two_batches  # the donor's file did not grow


def test_a_run_folder_written_before_the_record_count_resumes(tmp_path):
    whole, records, cost = whole_run(tmp_path)
    old = RunDir(tmp_path, "old")  # records-only JSONL and a cost without "records", as older versions wrote them
    lines = whole.file("m.jsonl").read_text().splitlines(keepends=True)
    old.write_text("m.jsonl", "".join(lines[:2]))
    old.write_json("m.cost.json", {"cost": {"tokens_generated": 2 * TOKENS, "reward_calls": 2}})

    resumed, resumed_cost = run_method(old, "m", Echo(), PROMPTS, BATCH)
    assert resumed == records and resumed_cost.tokens_generated == cost.tokens_generated
    assert old.file("m.jsonl").read_text() == whole.file("m.jsonl").read_text()


def test_a_bad_line_before_the_last_is_still_one_error_naming_file_and_line(tmp_path):
    run = RunDir(tmp_path, "r")
    run.write_text("m.jsonl", '{"id": "0", "response": "x"}\n{"id": "1", "resp\n{"id": "2", "response": "y"}\n')
    with pytest.raises(SpiError, match=r"m\.jsonl:2: not a JSON record"):
        run_method(run, "m", Echo(), PROMPTS, BATCH)


def finished_step(tmp_path, config, saved: dict | None = None) -> RunDir:
    """A run folder with one finished step, written with `config` (its config.yaml replaced by `saved` if given)."""
    run = RunDir(tmp_path, "r")
    run.start(config)
    run.write_json("step.json", {})
    if saved is not None:
        run.write_text("config.yaml", yaml.safe_dump(saved, sort_keys=False))
    return run


def test_a_saved_config_without_a_key_added_since_resumes_and_records_it(tmp_path):
    config = Config()
    saved = config.model_dump(mode="json")
    del saved["spi"]["per_depth"], saved["baselines"]  # a field and a section that did not exist yet
    finished_step(tmp_path, config, saved)
    run = RunDir(tmp_path, "r")
    run.start(config)  # not refused: the missing keys resolve to the values this config has
    run.commit()
    assert yaml.safe_load(run.file("config.yaml").read_text()) == config.model_dump(mode="json")


def test_a_changed_setting_is_refused_in_one_line_naming_it(tmp_path):
    finished_step(tmp_path, Config())
    changed = Config.model_validate({"spi": {"chunk": 8}, "generation": {"max_new_tokens": 32}})
    with pytest.raises(SpiError) as err:
        RunDir(tmp_path, "r").start(changed)
    message = str(err.value)
    assert "another config" in message and "\n" not in message
    assert "spi.chunk: 16 → 8" in message and "generation.max_new_tokens:" in message
    assert "spi.width" not in message  # only what differs
    RunDir(tmp_path, "r").start(Config(name="r", run_dir=str(tmp_path)))  # where the run lives is no setting


def test_a_changed_default_does_not_silently_change_a_resumed_run(tmp_path):
    saved = Config().model_dump(mode="json")
    del saved["spi"]["tree"]  # written before round 0 could be a tree: it drew `rollouts` plain samples
    finished_step(tmp_path, Config(), saved)
    with pytest.raises(SpiError, match=r"spi\.tree: \[\] → \[4, 2\]"):
        RunDir(tmp_path, "r").start(Config())  # today's default is a tree
    RunDir(tmp_path, "r").start(Config.model_validate({"spi": {"tree": []}}))  # the run as it was written


HOLD = """import sys
from spi_align.config import Config
from spi_align.runs.rundir import RunDir
run = RunDir(sys.argv[1], sys.argv[2])
run.start(Config())
print("started", flush=True)
sys.stdin.read()
"""


@contextmanager
def another_process_holding(root, name: str = "r"):
    """Another process that started the run `root/name` (and holds it until the block ends)."""
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "started"
        yield other.pid
    finally:
        other.stdin.close()
        other.wait(timeout=60)


def test_a_second_process_on_a_run_folder_is_refused_in_one_line_naming_the_first(tmp_path):
    with another_process_holding(tmp_path) as pid:
        with pytest.raises(SpiError) as err:
            RunDir(tmp_path, "r").start(Config())
        message = str(err.value)
        assert "in use by another process" in message and f"pid {pid} " in message and "\n" not in message
    with RunDir(tmp_path, "r") as run:  # free once the other process ended
        run.start(Config())
        again = RunDir(tmp_path, "r")  # this process may open its own run twice (e.g. to save a policy into it)
        again.start(Config())
        again.close()
    with another_process_holding(tmp_path):  # and free again once this process closed it
        pass
    assert not (tmp_path / "r").exists()  # the lock lives beside the folder: nothing was written, nothing is left


def test_spi_generate_on_a_run_another_process_holds_is_one_line_and_exit_2(capsys, tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n")
    argv = ["generate", f"data.prompts={prompts}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", "name=g"]
    with another_process_holding(tmp_path, "g") as pid:
        assert main([*argv, "search.method=sample", "generation.max_new_tokens=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {pid} " in err, err
    assert not (tmp_path / "g" / "outputs.jsonl").exists()


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_run_files_and_checkpoints_get_the_modes_the_umask_gives(tmp_path, umask_022):
    run = RunDir(tmp_path, "r")
    run.start(Config())
    run_method(run, "m", Echo(), PROMPTS, BATCH)
    with run.folder("values/round-0") as tmp:
        (tmp / "head.json").write_text("{}")
    for name in ("config.yaml", "m.jsonl", "m.cost.json", "values/round-0/head.json"):
        assert mode(run.file(name)) == 0o644, name  # a group can read the run
    assert mode(run.file("values/round-0")) == 0o755
    os.umask(0o077)  # an owner-only umask is respected too
    run.write_json("private.json", {})
    assert mode(run.file("private.json")) == 0o600


def test_checkpoint_files_written_owner_only_by_a_library_follow_the_umask(tmp_path, umask_022):
    """safetensors writes its files 0600 whatever the umask; a checkpoint folder still ends up readable by a group."""
    import torch
    from safetensors.torch import save_file

    run = RunDir(tmp_path, "r")
    run.start(Config())
    with run.folder("values/round-0") as tmp:
        save_file({"w": torch.zeros(2)}, tmp / "value_head.safetensors")
        (tmp / "sub").mkdir(mode=0o700)
    assert mode(run.file("values/round-0/value_head.safetensors")) == 0o644
    assert mode(run.file("values/round-0/sub")) == 0o755
