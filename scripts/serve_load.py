"""Load-test `spi serve` on loopback and write a report (see `spi_align.serve.load`).

Starts `spi serve RUN` in a child process, then per model: SEQUENTIAL chat requests one at a time, REQUESTS from
CLIENTS concurrent clients (p50 / p95 latency, requests/s, errors), the server's peak RSS, and a SIGTERM during a
load (no accepted request may be lost). Writes OUT/report.md, OUT/load.json and OUT/command.sh.

    .venv/bin/python scripts/serve_load.py runs/demo --models spi-1 bon-16 --clients 200 --requests 400 \\
        --max-tokens 32 --out results/serve-load
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from spi_align.config import DataConfig
from spi_align.data.prompts import load_prompts
from spi_align.serve.load import LoadSpec, run_load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished `spi run` directory (or saved improved policy)")
    parser.add_argument("--models", nargs="+", default=["spi-1", "bon-16"])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400, help="per model, concurrent phase")
    parser.add_argument("--sequential", type=int, default=20, help="per model, sent one at a time")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per phase before no new request")
    parser.add_argument("--no-sigterm", action="store_true", help="skip the SIGTERM-under-load check")
    parser.add_argument("--sigterm-after", type=float, default=5.0)
    parser.add_argument("--sigterm-clients", type=int, default=None, help="SIGTERM phase clients (default: --clients)")
    parser.add_argument("--prompts", default="default", help="prompt file, or 'default' (AlpacaEval eval split)")
    parser.add_argument("--prompt-limit", type=int, default=64)
    parser.add_argument("--out", default="results/serve-load")
    parser.add_argument("server_args", nargs="*", metavar="key=value", help="`spi serve` settings")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for chatty in ("httpx", "httpx2", "openai"):  # one line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)

    prompts = [p.text for p in load_prompts(DataConfig(prompts=args.prompts, limit=args.prompt_limit))]
    spec = LoadSpec(
        run=args.run,
        models=args.models,
        clients=args.clients,
        requests=args.requests,
        sequential=args.sequential,
        max_tokens=args.max_tokens,
        time_limit_s=args.time_limit,
        sigterm=not args.no_sigterm,
        sigterm_after_s=args.sigterm_after,
        sigterm_clients=args.sigterm_clients or 0,
        prompts=prompts,
        server_args=args.server_args,
    )
    out = Path(args.out)
    report = run_load(spec, out)
    command = shlex.join([".venv/bin/python", "scripts/serve_load.py", *(argv if argv is not None else sys.argv[1:])])
    (out / "command.sh").write_text(
        f"#!/usr/bin/env bash\n# Reproduces {out}: spi serve under load.\nset -euo pipefail\n{command}\n"
    )
    print((out / "report.md").read_text())
    return 0 if all(p["errors"] == {} for p in report["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
