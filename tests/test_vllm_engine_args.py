"""The vLLM backend's engines without starting one: what the config passes to `vllm.LLM` (the generation engine and
the state engine), and the one-line errors of bad input (vLLM not installed, an engine out of memory, a model vLLM
cannot pool). `vllm` is a stand-in module here, so these run where vLLM is not installed."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from spi_align.cli import main
from spi_align.config import Config, GenerationConfig, build_config
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.policy import load_policy
from spi_align.policy.vllm import VLLMPolicy, VLLMStatePolicy, keeping_rng

KV_CACHE_TOO_SMALL = (
    "To serve at least one request with the model's max seq len (8192), (0.19 GiB KV cache is needed, which is "
    "larger than the available KV cache memory (0.06 GiB). Try increasing `gpu_memory_utilization`\nmore text"
)
GPU_TAKEN = "Free memory on device cuda:0 (20.1/79.3 GiB) on startup is less than desired GPU memory utilization"


def fake_vllm(
    monkeypatch: pytest.MonkeyPatch, fail: Any = None, tasks: tuple[str, ...] = ("token_embed",), cpu: bool = False
) -> list[dict]:
    """Install a stand-in `vllm` module whose `LLM` records its keyword arguments (returned list, one dict per engine
    started); `fail(kwargs)` may return an exception for the constructor to raise; `cpu`: the platform is a CPU."""
    calls: list[dict] = []

    class LLM:
        supported_tasks = tasks
        llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=512))

        def __init__(self, **kwargs: Any) -> None:
            calls.append(kwargs)
            error = fail(kwargs) if fail is not None else None
            if error is not None:
                raise error

        def collective_rpc(self, method: Any, args: tuple = ()) -> list:
            return []

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM  # type: ignore[attr-defined]
    config = types.ModuleType("vllm.config")
    config.PoolerConfig = types.SimpleNamespace  # type: ignore[attr-defined]
    vllm.config = config  # type: ignore[attr-defined]
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.config", config)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return calls


def vllm_config(model: Path, *overrides: str) -> Config:
    return build_config(Config, None, [f"policy.model={model}", "policy.backend=vllm", *overrides])


def test_parallel_and_engine_settings_reach_both_engines_unchanged(monkeypatch, tiny_model_dir):
    """tensor_parallel_size: 2 and every other engine setting of the config go to `vllm.LLM` as they are, for the
    generation engine and (with its own overrides) the state engine; neither engine is really started."""
    calls = fake_vllm(monkeypatch, fail=lambda kwargs: ValueError("stop here") if "runner" in kwargs else None)
    cfg = vllm_config(
        tiny_model_dir,
        "policy.dtype=bfloat16",
        "policy.vllm.tensor_parallel_size=2",
        "policy.vllm.pipeline_parallel_size=2",
        "policy.vllm.distributed_executor_backend=ray",
        "policy.vllm.gpu_memory_utilization=0.6",
        "policy.vllm.max_model_len=2048",
        "policy.vllm.block_size=16",
        "policy.vllm.extra.max_num_seqs=64",
        "policy.vllm.extra.quantization=fp8",
        "policy.vllm.state_engine.gpu_memory_utilization=0.25",
    )
    policy = load_policy(cfg.policy, GenerationConfig(max_new_tokens=8))
    assert isinstance(policy, VLLMStatePolicy)
    settings = {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "data_parallel_size": 1,
        "gpu_memory_utilization": 0.6,
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "enforce_eager": False,
        "distributed_executor_backend": "ray",
        "enable_prefix_caching": True,
        "block_size": 16,
        "max_num_seqs": 64,
        "quantization": "fp8",
    }
    assert calls == [{"model": str(tiny_model_dir), "skip_tokenizer_init": True, **settings}]
    with pytest.raises(SpiError):  # the state engine starts on the first read; the stand-in stops it there
        policy.peek_end_hidden(policy.start([Prompt("p", "Hi")], Cost()))
    state = calls[1]
    pooler = state.pop("pooler_config")
    assert state == {
        "model": str(tiny_model_dir),
        "runner": "pooling",
        "convert": "embed",
        **settings,
        "gpu_memory_utilization": 0.25,
    }
    # every computed position's raw state (the last two are read), the prefix cache kept on
    assert (pooler.task, pooler.tok_pooling_type, pooler.use_activation) == ("token_embed", "ALL", False)
    assert pooler.seq_pooling_type == "LAST"  # vLLM turns prefix caching off for MEAN / CLS pooling


@pytest.mark.parametrize(
    ("cpu", "overrides", "generation_block", "state_block"),
    [
        (True, [], None, 32),  # CPUs: vLLM's 128 unless set; the state engine takes 32, the smallest they take
        (True, ["policy.vllm.block_size=64"], 64, 64),  # set: both engines take it
        (True, ["policy.vllm.state_engine.block_size=96"], None, 96),
        (False, [], None, None),  # GPUs: vLLM's default (16) on both
    ],
)
def test_the_state_engine_takes_small_blocks_on_cpus(
    monkeypatch, tiny_model_dir, cpu, overrides, generation_block, state_block
):
    """A state read recomputes its prefix's last partial block (vLLM's prefix cache holds whole blocks): the state
    engine's blocks are the smallest vLLM's CPU attention takes unless a block size is set."""
    calls = fake_vllm(monkeypatch, fail=lambda kwargs: ValueError("stop here") if "runner" in kwargs else None, cpu=cpu)
    policy = load_policy(vllm_config(tiny_model_dir, *overrides).policy, GenerationConfig(max_new_tokens=8))
    with pytest.raises(SpiError):
        policy.last_hidden(policy.start([Prompt("p", "Hi")], Cost()))
    assert [call.get("block_size") for call in calls] == [generation_block, state_block]


def test_hidden_states_off_gives_the_policy_without_states(monkeypatch, tiny_model_dir):
    fake_vllm(monkeypatch)
    cfg = vllm_config(tiny_model_dir, "policy.vllm.hidden_states=false")
    policy = load_policy(cfg.policy, GenerationConfig(max_new_tokens=8))
    assert type(policy) is VLLMPolicy and not policy.has_hidden_states


@pytest.mark.parametrize("where", ["extra", "state_engine"])
def test_engine_roles_cannot_be_overridden(where):
    with pytest.raises(SpiError, match=f"policy.vllm.{where}.*runner cannot be set here") as err:
        build_config(Config, None, [f"policy.vllm.{where}.runner=generate"])
    assert "\n" not in str(err.value)


def test_vllm_not_installed_is_one_line_with_the_install_command(monkeypatch, capsys, tiny_model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    args = [f"policy.model={tiny_model_dir}", "policy.backend=vllm", f"run_dir={tmp_path}", "search.method=sample"]
    assert main(["generate", *args, "data.limit=1", "generation.max_new_tokens=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "pip install 'spi_align[vllm]'" in err


def test_engine_out_of_memory_is_one_line_naming_the_setting_to_lower(monkeypatch, capsys, tiny_model_dir, tmp_path):
    fake_vllm(monkeypatch, fail=lambda kwargs: ValueError(KV_CACHE_TOO_SMALL))
    args = [f"policy.model={tiny_model_dir}", "policy.backend=vllm", f"run_dir={tmp_path}", "search.method=sample"]
    assert main(["generate", *args, "data.limit=1", "generation.max_new_tokens=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "out of memory" in err and "lower policy.vllm.max_model_len" in err


@pytest.mark.parametrize(
    ("error", "setting"),
    [
        (ValueError(GPU_TAKEN), "lower policy.vllm.state_engine.gpu_memory_utilization"),
        (ValueError(KV_CACHE_TOO_SMALL), "lower policy.vllm.state_engine.max_model_len"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "policy.vllm.state_engine."),
    ],
)
def test_state_engine_out_of_memory_names_its_own_settings(monkeypatch, tiny_model_dir, error, setting):
    fake_vllm(monkeypatch, fail=lambda kwargs: error if "runner" in kwargs else None)
    policy = load_policy(vllm_config(tiny_model_dir).policy, GenerationConfig(max_new_tokens=8))
    with pytest.raises(SpiError, match="state engine .* is out of memory") as err:
        policy.peek_end_hidden(policy.start([Prompt("p", "Hi")], Cost()))
    assert setting in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("failure", ["constructor", "no token_embed task"])
def test_a_model_vllm_cannot_pool_is_one_line_naming_the_setting(monkeypatch, tiny_model_dir, failure):
    refuse = ValueError("Model architectures ['OddForCausalLM'] are not supported for pooling\nat the moment")
    if failure == "constructor":
        fake_vllm(monkeypatch, fail=lambda kwargs: refuse if "runner" in kwargs else None)
    else:
        fake_vllm(monkeypatch, tasks=("classify",))
    policy = load_policy(vllm_config(tiny_model_dir).policy, GenerationConfig(max_new_tokens=8))
    rows = policy.start([Prompt("p", "Hi")], Cost())
    with pytest.raises(SpiError, match="cannot pool the hidden states") as err:
        policy.last_hidden(rows)
    assert "policy.vllm.hidden_states=false" in str(err.value) and "\n" not in str(err.value)


def test_starting_an_engine_leaves_the_global_generators_as_they_were():
    """vLLM reseeds the global generators when an engine starts in this process; the state engine starts inside
    `keeping_rng`, so the generation engine's sampling stream goes on as if nothing had started."""
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with keeping_rng():
        torch.manual_seed(0)  # what an engine start does
        torch.rand(5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_full_row_keeps_room_for_the_end_token_a_state_read_appends(monkeypatch, tiny_model_dir):
    """A prompt that fills the engine's context with max_new_tokens exactly is taken without states, and refused in
    one line with them: closing a full row for its end state would exceed the state engine's context."""
    fake_vllm(monkeypatch)
    prompt = Prompt("p", "Name a colour.")
    for hidden_states, refused in (("false", False), ("true", True)):
        cfg = vllm_config(tiny_model_dir, f"policy.vllm.hidden_states={hidden_states}")
        policy = load_policy(cfg.policy, GenerationConfig(max_new_tokens=8))
        fill = 512 - len(policy.prompt_ids([prompt])[0])  # the stand-in engine's context is 512 tokens
        if refused:
            with pytest.raises(SpiError, match="exceeds the model's context of 512 tokens"):
                policy.start([prompt], Cost(), GenerationConfig(max_new_tokens=fill))
        else:
            assert policy.start([prompt], Cost(), GenerationConfig(max_new_tokens=fill)).max_new_tokens == fill
