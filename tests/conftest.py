"""Shared fixtures: the real SmolLM2 tokenizer from the asset cache, tiny random models built on its vocab, and the
tiny policy every search test runs on.

Tests never touch the network. Tests that need the cached tokenizer fail with the command to fetch it when the cache is
empty (`make test` fetches first). Helpers here can also be imported: `from conftest import make_policy`. Stand-in
scorers live in `tests/mocks/scorers.py` (importable as `mocks.scorers`, or by path as 'tests/mocks/scorers.py:fn').
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

SKIP_FETCH = "embedded default not fetched: run `spi assets --fetch` (or `make assets`)"


def _cached_policy_dir() -> Path | None:
    from spi_align.data.assets import policy_dir

    path = policy_dir()
    return path if (path / "tokenizer_config.json").is_file() else None


def tiny_llama_config(tokenizer: Any) -> Any:
    """A 2-layer, 32-wide Llama config on the tokenizer's full vocabulary, with SmolLM2's special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )


def make_tiny_causal_lm(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised tiny `LlamaForCausalLM` (seeded, fp32, eval mode, eos id 2)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer)).to(torch.float32).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    return model


def make_tiny_backbone(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised tiny `LlamaModel` (no LM head), for reward and value models."""
    import torch
    from transformers import LlamaModel

    torch.manual_seed(seed)
    return LlamaModel(tiny_llama_config(tokenizer)).to(torch.float32).eval()


def make_policy(model: Any, tokenizer: Any, max_new_tokens: int = 24, seed: int = 0, **generation: Any) -> Any:
    """An `HFPolicy` on `model`: plain sampling (temperature 1, no top-k) unless `generation` says otherwise."""
    from spi_align.config import GenerationConfig
    from spi_align.policy import HFPolicy

    gen = GenerationConfig(**{"max_new_tokens": max_new_tokens, "temperature": 1.0, "top_k": 0, **generation})
    return HFPolicy(model, tokenizer, gen, seed=seed)


def never_ends(policy: Any) -> Any:
    """`policy` with no end token: every row runs to max_new_tokens (shapes become exact to count)."""
    import torch

    policy.eos_ids = torch.tensor([-1])
    return policy


def write_prompt_file(folder: Path, count: int) -> Path:
    """A JSONL prompt file of `count` short questions (with references) in `folder`."""
    rows = [{"prompt": f"Question {i}: name a colour.", "reference": "Blue."} for i in range(count)]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    """`write_prompt_file(tmp_path, 4)`."""
    return write_prompt_file(tmp_path, 4)


@pytest.fixture(scope="session")
def smol_policy_dir() -> Path:
    """The converted SmolLM2 directory in the asset cache (fails with the fetch command when not fetched)."""
    path = _cached_policy_dir()
    if path is None:
        pytest.fail(SKIP_FETCH)
    return path


@pytest.fixture(scope="session")
def _smol_tokenizer_once(smol_policy_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_policy_dir)


@pytest.fixture
def smol_tokenizer(_smol_tokenizer_once: Any) -> Any:
    """The real SmolLM2 tokenizer (loaded once per session; each test gets its own copy to mutate freely)."""
    return copy.deepcopy(_smol_tokenizer_once)


@pytest.fixture
def tiny_causal_lm(smol_tokenizer: Any) -> Any:
    """`make_tiny_causal_lm(smol_tokenizer)`: a fresh tiny random LlamaForCausalLM per test."""
    return make_tiny_causal_lm(smol_tokenizer)


@pytest.fixture
def tiny_backbone(smol_tokenizer: Any) -> Any:
    """`make_tiny_backbone(smol_tokenizer)`: a fresh tiny random LlamaModel per test."""
    return make_tiny_backbone(smol_tokenizer)


@pytest.fixture
def tiny_policy(tiny_causal_lm: Any, smol_tokenizer: Any) -> Any:
    """`make_policy(tiny_causal_lm, smol_tokenizer)`: the tiny random policy (24 new tokens, plain sampling, seed 0)."""
    return make_policy(tiny_causal_lm, smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, _smol_tokenizer_once: Any) -> Path:
    """A tiny random causal LM saved with the SmolLM2 tokenizer, for commands that take a model path."""
    path = tmp_path_factory.mktemp("tiny-policy")
    make_tiny_causal_lm(_smol_tokenizer_once).save_pretrained(path)
    _smol_tokenizer_once.save_pretrained(path)
    return path


def make_tiny_classifier(tokenizer: Any, seed: int = 0, num_labels: int = 1) -> Any:
    """A randomly initialised tiny `LlamaForSequenceClassification` (a reward model when `num_labels` is 1; pad id 2,
    as SmolLM2's tokenizer pads), its score head scaled up so that rewards differ visibly."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer)
    config.num_labels = num_labels
    model = LlamaForSequenceClassification(config).to(torch.float32).eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    return model


def save_tiny_classifier(folder: Path, tokenizer: Any, seed: int = 0, num_labels: int = 1) -> Path:
    """`make_tiny_classifier` and `tokenizer` saved in `folder` with `save_pretrained` (as a reward model ships)."""
    make_tiny_classifier(tokenizer, seed, num_labels).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory, _smol_tokenizer_once: Any) -> Path:
    """A tiny random sequence-classification reward model (num_labels 1) saved with the SmolLM2 tokenizer."""
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"), _smol_tokenizer_once)


def tiny_gemma3(seed: int = 0, vocab_size: int = 262144, hidden_size: int = 32, head_dim: int = 16) -> Any:
    """Gemma 3's layout at toy width: two sliding-window layers (window 8) then a full-attention one, SmolLM2's
    special ids (the tests' tokenizer); by default its full 262,144-token vocabulary."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = 2
    return model
