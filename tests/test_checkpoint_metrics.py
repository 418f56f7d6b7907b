"""A checkpoint and its metrics are one unit (`spi.py`, `experiment/spi_run.py`, `experiment/baselines.py`): a crash
between writing the two never leaves a checkpoint whose metrics a rerun, which only loads it, could not recover."""

from __future__ import annotations

from pathlib import Path

from conftest import write_prompt_file
from spi_align.cli import main
from spi_align.runs.rundir import RunDir

SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def test_a_crash_between_a_checkpoint_and_its_metrics_loses_neither(tmp_path, tiny_model_dir, monkeypatch):
    prompts = write_prompt_file(tmp_path, 6)
    args = [
        "demo", f"run_dir={tmp_path}", "name=crash", f"policy.model={tiny_model_dir}", f"data.prompts={prompts}",
        f"evaluator={SCORER}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=2", "spi.chunk=3",
        "spi.width=2", "spi.successors=2", "spi.rollouts=4", "spi.rounds=1", "spi.value=heads",
        "baselines.dpo=true", "baselines.dpo_steps=1", "baselines.dpo_batch_size=2",
    ]  # fmt: skip
    steps = ("reward_model.json", "values/round-0.json", "dpo.json")  # the metrics of each checkpoint
    original = RunDir.write_json
    for metrics in steps:

        def crash(self, name, data, metrics=metrics):
            if name == metrics:  # the checkpoint is trained and saved, its metrics are not yet
                raise KeyboardInterrupt
            return original(self, name, data)

        monkeypatch.setattr(RunDir, "write_json", crash)
        assert main(args) == 130
        monkeypatch.setattr(RunDir, "write_json", original)
    assert main(args) == 0
    run = tmp_path / "crash"
    for metrics in steps:
        assert (run / metrics).is_file(), metrics  # a rerun loads a finished checkpoint: its metrics came with it
    assert "## Reward model" in (run / "report.md").read_text()
