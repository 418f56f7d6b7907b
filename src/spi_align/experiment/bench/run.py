"""`spi bench`: time plain sampling, best-of-(W·K) and SPI-1..R in one process, check the targets, write the results.

Writes `bench.json` (config, environment, every trial, summaries, ratios, memory, targets) and `bench.md` (the two
tables) into the run directory, and prints the tables.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console

from spi_align.config import BenchConfig, build_config
from spi_align.experiment.bench.context import BenchContext
from spi_align.experiment.bench.memory import measure_in_subprocess
from spi_align.experiment.bench.methods import TEXT_GUIDED, method_keys
from spi_align.experiment.bench.table import (
    METHOD_COLUMNS,
    TARGET_COLUMNS,
    markdown_table,
    method_rows,
    rich_table,
    target_rows,
)
from spi_align.experiment.bench.targets import (
    Check,
    backend_checks,
    memory_check,
    timing_checks,
    unmeasured,
    value_model_checks,
)
from spi_align.experiment.bench.timing import Trial, paired_ratio, run_once, summarise, time_methods
from spi_align.experiment.bench.value_model import p3_seconds, p3_summary
from spi_align.runs.rundir import RunDir

console = Console()

BENCH_DEFAULTS: dict[str, Any] = {
    "name": "bench",
    "reward": "sentiment",
    "data": {"split": "eval", "limit": 4, "batch_size": 4},
    "generation": {"max_new_tokens": 64},
    "spi": {"width": 4, "successors": 4, "chunk": 16, "rounds": 3, "head": "mlp"},
}
"""The embedded default policy on 4 held-out prompts (one batch) × 64 tokens, W = K = 4, L = 16, SPI-1..3 guided by
MLP heads (which, unlike linear ones, cannot be fused: each round costs its own call); the cheap sentiment reward.
Sized for about 15 minutes on 2 CPU cores; every size can be overridden."""


def environment(ctx: BenchContext) -> dict[str, Any]:
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln), "")
    backends = {ctx.cfg.policy.backend: ctx.policy, **ctx.others}
    return {
        "backends": {name: backend_info(policy) for name, policy in backends.items()},
        "device": str(ctx.policy.device),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def backend_info(policy: Any) -> dict[str, Any]:
    """Engine version and, for vLLM, its prefix-cache counters over the whole bench."""
    stats = getattr(policy, "prefix_cache", None)
    if stats is None:
        return {"engine": f"transformers {transformers.__version__}"}
    import vllm

    return {"engine": f"vllm {vllm.__version__}", "prefix_cache": stats.to_dict()}


def gpu_checks(ctx: BenchContext) -> list[Check]:
    """P5 needs a GPU decode path (static cache, CUDA graphs): not measured by a CPU bench."""
    if ctx.policy.device.type == "cuda":
        return []
    return [unmeasured("P5", "SPI search tokens/s on a GPU, batch ~1024", "≥ 80k tok/s", "no GPU in this run")]


def run_bench(config_path: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """Run the bench described by the config (bench defaults, then the file, then overrides); returns bench.json."""
    cfg: BenchConfig = build_config(BenchConfig, config_path, overrides, defaults=BENCH_DEFAULTS)
    run = RunDir(cfg.run_dir, cfg.name or "bench")
    run.start(cfg)
    ctx = BenchContext.load(cfg)
    hidden = ctx.policy.has_hidden_states
    keys, rounds = method_keys(cfg, ctx.guide is not None, hidden), cfg.spi.rounds
    backends = ", ".join([cfg.policy.backend, *ctx.others])
    console.print(
        f"[bold]spi bench[/]: {len(ctx.prompts)} prompts × {cfg.generation.max_new_tokens} tokens, "
        f"W={cfg.spi.width} K={cfg.spi.successors} L={cfg.spi.chunk}, {rounds} rounds of {cfg.spi.head} heads, "
        f"{cfg.bench.repeats} repeats, reward {cfg.reward}, {torch.get_num_threads()} threads on {ctx.policy.device}, "
        f"backends {backends}"
    )
    if cfg.bench.warmup:
        for key, runner in ctx.methods.items():
            run_once(key, runner, ctx.prompts[:1], 1, ctx.reseed)

    def report(t: Trial) -> None:
        console.print(f"  repeat {t.repeat} · {t.method:<10} {t.wall_s:7.2f}s  {t.tokens} tokens")

    load_before = os.getloadavg()
    trials = time_methods(ctx.methods, ctx.prompts, cfg.data.batch_size, cfg.bench.repeats, ctx.reseed, report)
    load_after = os.getloadavg()
    summary = summarise(trials)
    ratios = {key: paired_ratio(trials, key, keys["bon"]).to_dict() for key in summary}
    memory: dict[str, dict[str, Any]] = {}
    if cfg.bench.memory and hidden:
        for key in (keys["bon"], keys[f"spi-{rounds}"]):
            console.print(f"  peak memory of {key} (fresh process)")
            memory[key] = measure_in_subprocess(run.commit() / "config.yaml", key)
    p3 = None
    if ctx.guide is not None:
        console.print(f"  value model alone on {cfg.bench.p3_lengths}-token responses (P3)")
        batch = ctx.prompts[: cfg.data.batch_size]
        p3 = p3_summary(p3_seconds(ctx.guide, ctx.policy, batch, cfg, cfg.bench.p3_lengths, cfg.bench.repeats))
    checks = timing_checks(trials, keys, rounds) if hidden else []
    if hidden:
        checks.append(memory_check(memory, keys, rounds))
    checks += backend_checks(trials, cfg.policy.backend, list(ctx.others), keys)
    checks += value_model_checks(trials, keys, p3, ctx.guide_note, cfg.spi.chunk)
    checks += gpu_checks(ctx)

    result = {
        "config": cfg.model_dump(mode="json"),
        "environment": {**environment(ctx), "load_average_before": load_before, "load_average_after": load_after},
        "method_keys": keys,
        "summary": summary,
        "ratio_to_bon": ratios,
        "memory": memory,
        "p3": p3,
        "targets": [c.to_dict() for c in checks],
        "trials": [t.to_dict() for t in trials],
    }
    rows, trows = method_rows(summary, ratios, memory), target_rows(checks)
    run.write_json("bench.json", result)
    run.write_text("bench.md", bench_markdown(cfg, result, rows, trows))
    console.print(rich_table("methods (median [min–max] over repeats; phases: median s)", METHOD_COLUMNS, rows))
    console.print(rich_table("targets (issue 5)", TARGET_COLUMNS, trows))
    console.print(f"→ {run.file('bench.json')}, {run.file('bench.md')}")
    return result


def bench_markdown(cfg: BenchConfig, result: dict[str, Any], rows: list[list[str]], trows: list[list[str]]) -> str:
    env = result["environment"]
    return "\n".join(
        [
            "# spi bench",
            "",
            f"{cfg.data.limit or 'all'} prompts ({cfg.data.prompts}, {cfg.data.split}) × "
            f"{cfg.generation.max_new_tokens} new tokens, policy {cfg.policy.model} ({cfg.policy.dtype}), "
            f"W={cfg.spi.width} K={cfg.spi.successors} L={cfg.spi.chunk}, SPI guided by 1–{cfg.spi.rounds} "
            f"random {cfg.spi.head} heads, reward {cfg.reward}, {cfg.bench.repeats} repeats.",
            *backends_paragraph(cfg, env),
            f"Device {env['device']} ({env['cpu'] or 'unknown CPU'}, {env['threads']} threads), "
            f"torch {env['torch']}, transformers {env['transformers']}; load average (1, 5, 15 min) before timing "
            f"{_load(env['load_average_before'])}, after {_load(env['load_average_after'])}.",
            "",
            "All methods ran in one process on the same prompts, policy and max new tokens, each from the same seed; "
            "odd repeats ran them in reverse order. Ratios are paired within a repeat: median [min–max]. "
            "Phases are median seconds; 'other' is wall time outside them (row selection, cache reordering, "
            "decoding to text). Peak RSS: each method once in a fresh process (VmHWM), with the increment over "
            "the loaded process in brackets.",
            "",
            "## Methods",
            "",
            markdown_table(METHOD_COLUMNS, rows),
            "",
            "## Targets",
            "",
            markdown_table(TARGET_COLUMNS, trows),
            "",
        ]
    )


def backends_paragraph(cfg: BenchConfig, env: dict[str, Any]) -> list[str]:
    """Which engine ran which methods; vLLM's prefix-cache reads over the whole bench."""
    backends = env.get("backends", {})
    if len(backends) < 2 and cfg.policy.backend == "hf":
        return []
    lines = [
        "",
        f"Backends: {cfg.policy.backend} (methods without a prefix) and "
        f"{', '.join(b for b in backends if b != cfg.policy.backend) or 'no other'} (methods 'BACKEND:...'); "
        f"'{TEXT_GUIDED}' is SPI guided by the reward on partial text, which every backend runs. vLLM settings: "
        f"{cfg.policy.vllm.engine_kwargs(cfg.policy.dtype)}.",
        "",
    ]
    for name, info in backends.items():
        stats = info.get("prefix_cache")
        line = f"- {name}: {info['engine']}"
        if stats:
            line += (
                f"; prefix cache: {stats['cached_tokens']} of {stats['prompt_tokens']} prompt tokens read from "
                f"the cache ({stats['hit_rate']:.1%}) over {stats['requests']} requests"
            )
        lines.append(line)
    return [*lines, ""]


def _load(values: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)
