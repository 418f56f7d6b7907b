"""The `spi` command line. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spi_align.errors import SpiError

EXIT_USER_ERROR = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.n=8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spi", description="Inference-time successive policy iterations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="list the embedded default assets (and fetch what is missing)")
    p.add_argument("--fetch", action="store_true", help="fetch and convert whatever is missing")

    p = sub.add_parser("generate", help="plain sampling or best-of-N over a prompt file")
    _add_config_args(p)

    p = sub.add_parser("score", help="score responses in a file (prompt + response columns)")
    p.add_argument("file", help="JSONL/JSON/CSV/parquet file with prompt and response columns")
    p.add_argument("--scorer", default="similarity", help="similarity, sentiment, a reward-model dir, or module:fn")
    p.add_argument("--out", help="write the scored records here (JSONL)")

    p = sub.add_parser("run", help="SPI rounds, baselines and report (Algorithm 1) from a config file")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. spi.rounds=3")

    p = sub.add_parser("demo", help="the main job on the embedded default (SPI vs best-of-16)")
    _add_config_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from spi_align import commands

        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except SpiError as exc:
        print(f"spi: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("spi: interrupted; finished steps are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
