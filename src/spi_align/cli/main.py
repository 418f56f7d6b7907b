"""The `spi` command line. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spi_align.core.errors import SpiError

EXIT_USER_ERROR = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.n=8")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spi", description="Inference-time successive policy iterations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="list the embedded assets (and fetch what is missing)")
    p.add_argument(
        "--fetch",
        nargs="*",
        metavar="NAME",
        help="fetch and convert whatever is missing: the defaults, or the assets named (e.g. gemma3-270m, optional)",
    )

    p = sub.add_parser("generate", help="plain sampling or best-of-N over a prompt file")
    _add_config_args(p)

    p = sub.add_parser("score", help="score responses in a file (prompt + response columns)")
    p.add_argument("file", help="JSONL/JSON/CSV/parquet file with prompt and response columns")
    p.add_argument(
        "--scorer", default="similarity", help="similarity, sentiment, a reward model (folder or hub id), or module:fn"
    )
    p.add_argument("--device", default="cpu", help="where a reward model runs: cpu, cuda, cuda:1, auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="a reward model's")
    p.add_argument("--out", help="write the scored records here (JSONL)")

    p = sub.add_parser(
        "run",
        help="SPI rounds, baselines and report (Algorithm 1) from a config file",
        epilog="Every key, its resolved value and what it does: spi config CONFIG.yaml [key=value ...]",
    )
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. spi.rounds=3 (list them: spi config)"
    )

    p = sub.add_parser("config", help="print a config's resolved settings with what each does, section by section")
    p.add_argument("config", nargs="?", help="YAML config file (default: the defaults `spi run` starts from)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. spi.width=8")
    p.add_argument("--json", action="store_true", help="one JSON object: each dotted key's value and docstring")

    p = sub.add_parser("judge", help="judge a finished run's methods against a baseline with an LLM (both orders)")
    p.add_argument("run", help="a finished `spi run` directory")
    p.add_argument("--against", help="baseline method (default: the run's bon-N)")
    p.add_argument("--methods", type=_names, help="comma-separated methods to judge (default: all others)")
    _add_config_args(p)  # judge settings: base_url=... model=... (see spi_align.evaluation.judge.JudgeConfig)

    p = sub.add_parser("export", help="write a finished run's answers in AlpacaEval's model_outputs format")
    p.add_argument("run", help="a finished `spi run` directory")
    p.add_argument("--methods", type=_names, help="comma-separated methods to export (default: all)")
    p.add_argument("--out", help="output folder (default: RUN/alpaca_eval)")

    p = sub.add_parser(
        "inspect", help="one self-contained HTML page of a finished run's search trees, prompt by prompt"
    )
    p.add_argument("run", help="a finished `spi run` directory")
    p.add_argument("--method", help="the method to show (default: the run's last spi-k)")
    p.add_argument("--out", help="the HTML file to write (default: RUN/inspect-<method>.html)")

    p = sub.add_parser("sweep", help="a grid of `spi run` configs, cached by config hash; Table 1/3 and Fig 4/5")
    p.add_argument("spec", help="sweep spec YAML (base config + grid; see spi_align.experiment.sweep)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are cached; run nothing")
    p.add_argument("--max-cells", type=int, help="run at most this many missing cells, then write the report")

    p = sub.add_parser("demo", help="the main job on the embedded default (SPI vs best-of-16)")
    _add_config_args(p)

    p = sub.add_parser("bench", help="time SPI search against best-of-N and plain sampling; check the cost targets")
    _add_config_args(p)

    p = sub.add_parser("serve", help="serve a finished run's methods behind an OpenAI-compatible API")
    p.add_argument("run", help="a finished `spi run` directory (or a saved improved policy)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; any other address needs an API key)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--api-key", help="bearer key every request must carry (default: $SPI_API_KEY)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="server settings, e.g. max_batch=32")
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars and one-line errors only: no per-load bars or warnings from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _log_to_console() -> None:
    """The library logs through `logging`; the command line renders its INFO lines with rich (once)."""
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger("spi_align")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(show_path=False, show_level=False, markup=False, log_time_format="[%X]")
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (`spi judge RUN --against bon-16 model=...`)
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    try:
        _quiet_libraries()
        _log_to_console()
        from spi_align.cli import commands

        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except SpiError as exc:
        print(f"spi: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("spi: interrupted; finished steps are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
