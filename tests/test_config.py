"""Config files and overrides: defaults, YAML, key=value, and one-line errors."""

from __future__ import annotations

import pytest

from spi_align.config import Config, SPIConfig, build_config, parse_overrides, to_yaml
from spi_align.core.errors import SpiError


def test_overrides_are_parsed_as_yaml_scalars_and_nest():
    assert parse_overrides(["search.n=8", "spi.betas=[1, 2, 2.5]", "name=x"]) == {
        "search": {"n": 8},
        "spi": {"betas": [1, 2, 2.5]},
        "name": "x",
    }


def test_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search: {n: 4}\nspi: {chunk: 8}\n")
    cfg = build_config(Config, path, ["search.n=2"], defaults={"search": {"n": 16}, "seed": 3})
    assert (cfg.search.n, cfg.spi.chunk, cfg.seed) == (2, 8, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.nn=3"], "unknown key 'search.nn'"),
        (["search.n=0"], "search.n: Input should be greater than 0"),
        (["generation.max_new_tokens=0"], "generation.max_new_tokens: Input should be greater than 0"),
        (["spi.betas=[]"], "spi.betas"),
        (["spi.betas=[1, -2]"], "spi.betas.1"),
        (["spi.selection=random"], "spi.selection"),
        (["search=3"], "search"),
        (["no_equals_sign"], "not of the form key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(overrides, message):
    with pytest.raises(SpiError, match=message.replace("[", r"\[")) as err:
        build_config(Config, None, overrides)
    assert "\n" not in str(err.value)


def test_text_fields_keep_the_text_as_written():
    cfg = build_config(Config, None, ["name=2024", "data.prompts=2025.10", "spi.value_backbone=yes"])
    assert (cfg.name, cfg.data.prompts, cfg.spi.value_backbone) == ("2024", "2025.10", "yes")
    assert build_config(Config, None, ["data.train_prompts=null"]).data.train_prompts is None
    cfg = build_config(Config, None, ["seed=2024", "spi.betas=[1, 2.5]"])  # numbers stay numbers elsewhere
    assert (cfg.seed, cfg.spi.betas) == (2024, [1.0, 2.5])
    assert build_config(Config, None, ["policy.vllm.extra.max_num_seqs=8"]).policy.vllm.extra == {"max_num_seqs": 8}


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        (["name.first=1"], "name"),
        (["seed.x=1"], "seed"),
        (["spi.rounds.k=3"], "spi.rounds"),
        (["name=x", "name.y=2"], "name"),
    ],
)
def test_a_key_below_a_plain_value_is_not_a_section(overrides, where):
    with pytest.raises(SpiError, match=f"cannot set '.*': '{where}' is not a section") as err:
        build_config(Config, None, overrides)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpiError, match="config file not found"):
        build_config(Config, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(SpiError, match="not valid YAML"):
        build_config(Config, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SpiError, match="mapping"):
        build_config(Config, listy)


def test_every_field_has_a_docstring():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            if isinstance(field.default, type(model).__mro__[0]) or hasattr(field.annotation, "model_fields"):
                walk(field.annotation)

    walk(Config)


def test_beta_schedule_repeats_its_last_value_and_yaml_round_trips():
    spi = SPIConfig(betas=[1.0, 2.0, 2.5])
    assert [spi.beta(i) for i in range(5)] == [1.0, 2.0, 2.5, 2.5, 2.5]
    cfg = build_config(Config, None, ["spi.betas=[1, 2]"])
    assert Config.model_validate(__import__("yaml").safe_load(to_yaml(cfg))) == cfg
