"""`spi config`: every resolved setting with its docstring, by section; an unknown key names the nearest ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.config import Config, did_you_mean, dotted_keys

DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")


def run_ok(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spi: error: "), err
    return err


def test_defaults_every_section_key_and_docstring(capsys):
    out = run_ok(capsys, ["config"])
    for section in ("top level", "policy", "policy.vllm", "generation", "data", "search", "spi", "reward_model"):
        assert re.search(rf"^{re.escape(section)} ─", out, re.M), section
    assert re.search(r"^baselines ─", out, re.M)
    for key in dotted_keys(Config):
        assert re.search(rf"^{re.escape(key)} = ", out, re.M), key
    assert "spi.width = 4" in out and 'policy.model = "default"' in out
    flat = " ".join(out.split())  # docstrings wrap at the console's width
    assert "W: beams kept (parents) after each chunk." in flat
    assert "Successive policy iterations: rounds, beam shape, value functions." in flat  # the section's own


def test_file_and_overrides_resolve_as_spi_run(capsys):
    out = run_ok(capsys, ["config", DEMO, "spi.width=7"])
    assert "spi.width = 7" in out
    assert 'name = "demo"' in out and 'reward = "default"' in out  # from the file
    assert "spi.successors = 4" in out  # the file's, unchanged


def test_overrides_without_a_file_and_json(capsys):
    out = run_ok(capsys, ["config", "spi.width=7", "spi.tree=[2]", "--json"])
    data = json.loads(out)
    assert data["spi.width"] == {"value": 7, "doc": "W: beams kept (parents) after each chunk."}
    assert data["spi.tree"]["value"] == [2]
    assert data["policy.vllm.dtype"]["value"] is None
    assert set(data) == set(dotted_keys(Config))


def test_unknown_override_suggests_the_nearest_key(capsys):
    err = one_line_error(capsys, ["run", DEMO, "spi.widht=3"])
    assert "unknown key 'spi.widht'" in err and "did you mean spi.width?" in err, err
    err = one_line_error(capsys, ["config", "policy.devise=cpu"])
    assert "did you mean policy.device?" in err, err


def test_unknown_yaml_key_suggests_the_nearest_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("spi: {chunks: 8}\n")
    err = one_line_error(capsys, ["config", str(cfg)])
    assert "unknown key 'spi.chunks'; did you mean spi.chunk?" in err, err


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("spi.widht", "; did you mean spi.width?"),  # spi.ridge is close too, but much less so
        ("width", "; did you mean spi.width?"),  # a key without its section
        ("temperature", "; did you mean generation.temperature or spi.temperature?"),  # two sections hold it
        ("spi.temprature", "; did you mean spi.temperature?"),  # the right section wins
        ("policy.vllm.tensor_parallel", "; did you mean policy.vllm.tensor_parallel_size?"),
        ("spi.value_size", "; did you mean spi.value_batch_size or spi.value or spi.value_lr?"),  # at most 3
        ("zzz", ""),
    ],
)
def test_did_you_mean(key, expected):
    assert did_you_mean(key, Config) == expected


def test_run_help_points_to_spi_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    assert "spi config" in capsys.readouterr().out
