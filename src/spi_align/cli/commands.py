"""What each `spi` subcommand does, given its parsed arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spi_align.config import Config, build_config
from spi_align.core.errors import SpiError
from spi_align.runs.files import atomic_write_jsonl
from spi_align.runs.rundir import RunDir

console = Console()


def cmd_assets(args: argparse.Namespace) -> int:
    from spi_align.data import assets

    if args.fetch == []:
        assets.fetch_all()
    for name in args.fetch or []:
        assets.fetch_asset(name)
    table = Table(title=f"spi_align assets (cache: {assets.cache_dir()})")
    for column in ("name", "what", "present", "size (MB)", "path"):
        table.add_column(column)
    for row in assets.asset_table():
        size = "" if row["size_mb"] is None else f"{row['size_mb']:.1f}"
        table.add_row(row["name"], row["what"], "yes" if row["present"] else "no", size, str(row["path"]))
    console.print(table)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from spi_align.data.prompts import load_prompts
    from spi_align.policy import load_policy
    from spi_align.runs.resumable import run_method
    from spi_align.scoring import make_scorer
    from spi_align.search.registry import MethodContext, build_method

    cfg: Config = build_config(Config, args.config, args.overrides)
    prompts = load_prompts(cfg.data)
    name = {"best_of_n": f"bon-{cfg.search.n}"}.get(cfg.search.method, cfg.search.method)
    if cfg.search.improved is not None:
        from spi_align.spi import load

        improved = load(cfg.search.improved, device=cfg.policy.device)
        policy, search = improved.policy, improved.method(name)
    else:
        policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
        device = str(policy.device)
        reward = None if name == "sample" else make_scorer(cfg.reward, device, cfg.policy.dtype, policy=policy)
        search = build_method(name, MethodContext(policy, reward, cfg.spi))
    run = RunDir(cfg.run_dir, cfg.name or f"generate-{search.name}-seed{cfg.seed}")
    run.start(cfg)
    records, cost = run_method(run, "outputs", search, prompts, cfg.data.batch_size, policy.reseed, cfg.seed)
    run.write_json("metrics.json", {"method": search.name, "prompts": len(records), "cost": cost.to_dict()})
    console.print(
        f"{search.name}: {len(records)} prompts, {cost.tokens_generated} tokens in {cost.total_seconds:.1f}s "
        f"→ {run.file('outputs.jsonl')}"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from spi_align.data.prompts import load_responses
    from spi_align.hf.models import resolve_device
    from spi_align.scoring import make_scorer

    pairs = load_responses(args.file)
    scorer = make_scorer(args.scorer, device=str(resolve_device(args.device)), dtype=args.dtype)
    scores = scorer.score([p for p, _ in pairs], [r for _, r in pairs])
    out = Path(args.out) if args.out else Path(args.file).with_suffix(f".{scorer.name}.jsonl")
    if out.resolve() == Path(args.file).resolve():
        raise SpiError("--out must differ from the input file")
    atomic_write_jsonl(
        out,
        ({"id": p.id, "prompt": p.text, "response": r, "score": s} for (p, r), s in zip(pairs, scores, strict=True)),
    )
    mean = sum(scores) / len(scores)
    console.print(f"{scorer.name}: mean {mean:.4f} over {len(scores)} responses → {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.markdown import Markdown

    from spi_align.experiment.demo import run_demo

    console.print(Markdown(run_demo(args.config, args.overrides)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from spi_align.experiment.bench.run import run_bench

    run_bench(args.config, args.overrides)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rich.markdown import Markdown

    from spi_align.experiment.spi_run import spi_run

    console.print(Markdown(spi_run(build_config(Config, args.config, args.overrides))))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from rich.padding import Padding
    from rich.text import Text

    from spi_align.config import describe_config

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path and not Path(path).is_file():  # `spi config key=value ...`: no file
        path, overrides = None, [path, *overrides]
    sections = describe_config(build_config(Config, path, overrides))
    if args.json:
        console.print_json(data={f.key: {"value": f.value, "doc": f.doc} for s in sections for f in s.fields})
        return 0
    for section in sections:  # Text, not markup: docstrings hold brackets ([4, 2], [vllm])
        console.rule(Text(section.name or "top level", style="bold"), align="left")
        if section.doc:
            console.print(Text(section.doc, style="italic"))
        for field in section.fields:
            console.print(Text.assemble((field.key, "bold cyan"), " = ", json.dumps(field.value, ensure_ascii=False)))
            if field.doc:
                console.print(Padding(Text(field.doc, style="dim"), (0, 0, 0, 4), expand=False))
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from spi_align.evaluation.judge import JudgeConfig
    from spi_align.evaluation.judge_run import judge_run

    cfg = build_config(JudgeConfig, args.config, args.overrides)
    text, folder = judge_run(args.run, cfg, against=args.against, methods=args.methods)
    console.print(text, markup=False)
    console.print(f"judge table: {folder / 'table.md'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spi_align.evaluation.export import export_run

    files = export_run(args.run, args.methods, args.out)
    for path in files:
        console.print(f"{path}  (alpaca_eval --model_outputs {path})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from spi_align.experiment.inspect_page import inspect_run

    path = inspect_run(args.run, args.method, args.out)
    console.print(f"{path} ({path.stat().st_size / 1e6:.2f} MB; open it in a browser)", markup=False)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from spi_align.experiment.sweep import run_sweep

    _, folder = run_sweep(
        args.spec,
        dry_run=args.dry_run,
        log=lambda line: console.print(line, markup=False, soft_wrap=True),
        max_cells=args.max_cells,
    )
    if not args.dry_run:
        console.print(f"sweep tables and plots: {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from spi_align.serve.config import ENV_API_KEY, ServeConfig, check_binding
    from spi_align.serve.server import serve
    from spi_align.spi import load

    cfg = build_config(ServeConfig, None, args.overrides)
    key = args.api_key or cfg.api_key or os.environ.get(ENV_API_KEY) or None
    flags = {k: v for k, v in {"host": args.host, "port": args.port, "api_key": key}.items() if v is not None}
    cfg = build_config(ServeConfig, None, [], defaults={**cfg.model_dump(), **flags})
    check_binding(cfg)  # before the model loads
    serve(load(args.run), cfg)
    return 0
