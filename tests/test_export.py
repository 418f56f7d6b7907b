"""`spi export`: a finished run's answers in AlpacaEval's model_outputs format, one JSON file per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.core.errors import SpiError
from spi_align.data import assets
from spi_align.evaluation.export import export_run


def write_method(run: Path, method: str, answers: list[tuple[str, str, str]]) -> None:
    records = [{"id": i, "prompt": p, "response": r, "score": 1.0, "candidates": []} for i, p, r in answers]
    (run / f"eval-{method}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "7", "prompt": "Say hi.", "dataset": "helpful_base"})
        + "\n"
        + json.dumps({"id": "9", "prompt": "Count to 3.", "dataset": "vicuna"})
        + "\n"
    )
    monkeypatch.setattr(assets, "default_prompts_file", lambda: prompts)
    path = tmp_path / "spi-demo"
    path.mkdir()
    (path / "config.yaml").write_text("data:\n  prompts: default\n  split: eval\n")
    write_method(path, "bon-16", [("7", "Say hi.", "Hello."), ("9", "Count to 3.", "1 2")])
    write_method(path, "spi-1", [("7", "Say hi.", "Hi there!"), ("9", "Count to 3.", "1, 2, 3")])
    return path


def test_export_writes_model_outputs_per_method(run, capsys):
    assert main(["export", str(run)]) == 0
    files = sorted(p.name for p in (run / "alpaca_eval").iterdir())
    assert files == ["bon-16.json", "spi-1.json"]
    spi = json.loads((run / "alpaca_eval" / "spi-1.json").read_text())
    assert spi == [
        {"instruction": "Say hi.", "output": "Hi there!", "generator": "spi-demo/spi-1", "dataset": "helpful_base"},
        {"instruction": "Count to 3.", "output": "1, 2, 3", "generator": "spi-demo/spi-1", "dataset": "vicuna"},
    ]
    assert "alpaca_eval --model_outputs" in capsys.readouterr().out


def test_export_chosen_methods_to_a_folder_without_dataset_for_own_prompts(run, tmp_path):
    (run / "config.yaml").write_text("data:\n  prompts: my_prompts.jsonl\n")
    out = tmp_path / "out"
    files = export_run(run, ["bon-16"], out)
    assert files == [out / "bon-16.json"]
    records = json.loads(files[0].read_text())
    assert [set(r) for r in records] == [{"instruction", "output", "generator"}] * 2


def test_export_unknown_method_is_one_line(run, capsys):
    assert main(["export", str(run), "--methods", "spi-1,spi-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no method spi-9" in err


def test_export_needs_a_run_directory(tmp_path):
    with pytest.raises(SpiError, match="no evaluated methods"):
        export_run(tmp_path)


def test_a_run_still_being_written_exports_its_complete_lines(run, tmp_path):
    """A torn last line (a write in flight, or a crash) is left out, as a resume drops it, instead of an error."""
    path = run / "eval-spi-1.jsonl"
    path.write_text(path.read_text() + '{"id": "11", "prompt": "Half')
    out = tmp_path / "outputs"
    export_run(run, ["spi-1"], out)
    rows = json.loads((out / "spi-1.json").read_text())
    assert [r["output"] for r in rows] == ["Hi there!", "1, 2, 3"]
