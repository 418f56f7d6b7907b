"""A load generator for `spi serve`: many concurrent OpenAI clients on loopback, bounded in count and time.

    report = run_load(LoadSpec(run="runs/demo", models=["spi-1", "bon-16"]), out="results/serve-load")

For each model it sends `sequential` chat requests one at a time (the rate without batching), then `requests`
chat requests from `clients` concurrent clients (latency p50 / p95, requests/s, errors, lost requests); then the
server's peak RSS; then, optionally, a SIGTERM while `clients` clients are sending: every request the server
accepted must be answered (the server logs how many it accepted and answered when it exits). The server is started
as `spi serve RUN` in a child process on a free loopback port. `scripts/serve_load.py` is the command line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from spi_align.core.errors import SpiError
from spi_align.runs.files import atomic_write_text

log = logging.getLogger(__name__)

STOPPED = re.compile(r"stopped after answering (\d+) of (\d+) accepted requests")


@dataclass
class LoadSpec:
    """What to send."""

    run: str
    """The `spi run` directory (or saved improved policy) the server loads."""
    models: list[str] = field(default_factory=lambda: ["spi-1", "bon-16"])
    """Methods to load, one after the other."""
    clients: int = 200
    """Concurrent clients."""
    requests: int = 400
    """Requests per model in the concurrent phase."""
    sequential: int = 20
    """Requests per model sent one at a time (the rate without batching)."""
    max_tokens: int = 32
    """New tokens per answer."""
    time_limit_s: float = 600.0
    """No request is started after this many seconds of a phase (the ones in flight finish)."""
    request_timeout_s: float = 900.0
    """Client-side time limit of one request."""
    sigterm: bool = True
    """Also send SIGTERM during a load and check that no accepted request is lost."""
    sigterm_after_s: float = 5.0
    """Seconds into that load before the SIGTERM."""
    sigterm_clients: int = 0
    """Concurrent clients of the SIGTERM phase (0 = `clients`): every request they get accepted must be answered."""
    prompts: list[str] = field(default_factory=lambda: ["Name three colours."])
    """Instructions, used in turn."""
    server_args: list[str] = field(default_factory=list)
    """Extra `spi serve` settings (key=value), e.g. max_batch=32."""


@dataclass
class Phase:
    """What one phase measured."""

    model: str
    mode: str
    """'sequential', 'concurrent' or 'sigterm'."""
    clients: int
    sent: int
    ok: int
    errors: dict[str, int]
    seconds: float
    requests_per_s: float
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    completion_tokens: int
    """Every token the searches generated for the answered requests (usage.completion_tokens)."""


def client_http() -> Any:
    """The HTTP library the installed `openai` is built on (httpx2 for openai 3, httpx before)."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        return httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def classify(exc: BaseException) -> str:
    """A short error name: 'HTTP 503', 'refused' (never connected), 'timeout', or the transport error's type."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    cause = exc.__cause__ or exc
    if type(cause).__name__ == "ConnectError":
        return "refused"
    return type(cause).__name__


async def load_phase(
    base_url: str,
    api_key: str | None,
    model: str,
    spec: LoadSpec,
    clients: int,
    requests: int,
    mode: str,
    fresh_connections: bool = False,
    started: asyncio.Event | None = None,
) -> Phase:
    """`requests` chat requests from `clients` concurrent clients; `started` is set once the first one is sent."""
    limits = client_http().Limits(
        max_connections=clients + 8, max_keepalive_connections=0 if fresh_connections else clients
    )
    http = openai.DefaultAsyncHttpxClient(limits=limits)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=spec.request_timeout_s, http_client=http
    )
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    tokens = 0
    sent = 0
    start = time.monotonic()

    async def one_client() -> None:
        nonlocal sent, tokens
        while sent < requests and time.monotonic() - start < spec.time_limit_s:
            i = sent
            sent += 1
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": spec.prompts[i % len(spec.prompts)]}
            ]
            t0 = time.monotonic()
            if started is not None:
                started.set()
            try:
                out = await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=spec.max_tokens,
                )
            except openai.APIError as exc:
                errors[classify(exc)] += 1
                if mode == "sigterm" and errors["refused"]:
                    return  # the server stopped listening: this client is done
                continue
            latencies.append(time.monotonic() - t0)
            tokens += out.usage.completion_tokens if out.usage else 0

    try:
        await asyncio.gather(*(one_client() for _ in range(clients)))
    finally:
        await client.close()
    seconds = time.monotonic() - start
    log.info("%s %s: %d ok, %d errors in %.1fs", model, mode, len(latencies), sum(errors.values()), seconds)
    return Phase(
        model=model,
        mode=mode,
        clients=clients,
        sent=sent,
        ok=len(latencies),
        errors=dict(errors),
        seconds=seconds,
        requests_per_s=len(latencies) / seconds if seconds > 0 else 0.0,
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        max_s=max(latencies) if latencies else None,
        completion_tokens=tokens,
    )


class ServerProcess:
    """`spi serve RUN` in a child process on a free loopback port; its log goes to a file."""

    def __init__(self, run: str, args: list[str], api_key: str | None = None, start_timeout_s: float = 600.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        handle, name = tempfile.mkstemp(prefix="spi-serve-", suffix=".log")
        self.log_path = Path(name)
        env = {**os.environ, "COLUMNS": "200", **({"SPI_API_KEY": api_key} if api_key else {})}
        command = [sys.executable, "-m", "spi_align.cli", "serve", run, "--port", str(self.port), *args]
        log.info("starting %s", shlex.join(command))
        with os.fdopen(handle, "w") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise SpiError(f"spi serve exited with {self.process.returncode} at start: {self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                raise SpiError(f"spi serve did not answer within {start_timeout_s:g}s: {self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux: VmHWM)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else None

    def terminate(self, timeout: float = 600.0) -> tuple[int | None, int | None]:
        """SIGTERM, wait for the exit; (answered, accepted) from the server's last log line."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        found = STOPPED.findall(self.log_path.read_text(errors="replace"))
        return (int(found[-1][0]), int(found[-1][1])) if found else (None, None)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_path.unlink(missing_ok=True)


async def sigterm_phase(server: ServerProcess, api_key: str | None, model: str, spec: LoadSpec) -> dict[str, Any]:
    """Load from `clients` clients (a fresh connection per request), SIGTERM after `sigterm_after_s`; the server
    must answer every request it accepted."""
    started = asyncio.Event()
    clients = spec.sigterm_clients or spec.clients
    endless = 10**9  # clients send until the server stops listening (or the phase's time limit)
    task = asyncio.ensure_future(
        load_phase(server.url + "/v1", api_key, model, spec, clients, endless, "sigterm", True, started)
    )
    await started.wait()
    await asyncio.sleep(spec.sigterm_after_s)
    log.info("SIGTERM to the server under load")
    answered, accepted = await asyncio.to_thread(server.terminate)
    phase = await task
    lost = None if accepted is None or answered is None else accepted - answered
    return {
        **asdict(phase),
        "server_accepted": accepted,
        "server_answered": answered,
        "lost": lost,
        "exit_code": server.process.returncode,
    }


def run_load(spec: LoadSpec, out: str | Path | None = None, api_key: str | None = None) -> dict[str, Any]:
    """Every phase against a fresh `spi serve`; writes `report.md` and `load.json` (and `command.sh` when asked by
    the caller) to `out`. Returns the report's data."""
    server = ServerProcess(spec.run, spec.server_args, api_key)
    phases: list[Phase] = []
    report: dict[str, Any] = {"spec": asdict(spec), "machine": {"cpus": os.cpu_count()}}
    try:
        base = server.url + "/v1"
        for model in spec.models:
            phases.append(asyncio.run(load_phase(base, api_key, model, spec, 1, 1, "warm-up")))
            phases.append(asyncio.run(load_phase(base, api_key, model, spec, 1, spec.sequential, "sequential")))
            phases.append(
                asyncio.run(load_phase(base, api_key, model, spec, spec.clients, spec.requests, "concurrent"))
            )
        report["peak_rss_mb"] = server.peak_rss_mb()
        report["metrics"] = httpx.get(
            server.url + "/metrics", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
        ).text
        if spec.sigterm:
            report["sigterm"] = asyncio.run(sigterm_phase(server, api_key, spec.models[0], spec))
    finally:
        server.close()
    report["phases"] = [asdict(p) for p in phases]
    if "sigterm" in report:  # every answer the server sent reached a client, and it answered all it accepted
        report["sigterm"]["client_answers_total"] = sum(p.ok for p in phases) + report["sigterm"]["ok"]
    report["speedup"] = speedups(phases)
    if out is not None:
        write_report(report, Path(out))
    return report


def speedups(phases: list[Phase]) -> dict[str, float | None]:
    """Per model: concurrent requests/s over sequential requests/s."""
    rate = {(p.model, p.mode): p.requests_per_s for p in phases}
    models = dict.fromkeys(p.model for p in phases)
    return {
        m: (rate[(m, "concurrent")] / rate[(m, "sequential")]) if rate.get((m, "sequential")) else None for m in models
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """`load.json` (everything, the server's final metrics included) and `report.md` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "load.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render(report))


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    spec = report["spec"]
    lines = [
        "# spi serve under load",
        "",
        f"Run `{spec['run']}`, {spec['max_tokens']} new tokens per chat request, {spec['clients']} concurrent "
        f"clients on loopback, {report['machine']['cpus']} CPUs; server settings: "
        f"{' '.join(spec['server_args']) or 'defaults'}.",
        "",
        "| model | mode | clients | sent | ok | errors | req/s | p50 (s) | p95 (s) | max (s) | tokens generated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        errors = ", ".join(f"{k}: {v}" for k, v in p["errors"].items()) or "0"
        lines.append(
            f"| {p['model']} | {p['mode']} | {p['clients']} | {p['sent']} | {p['ok']} | {errors} | "
            f"{fmt(p['requests_per_s'])} | {fmt(p['p50_s'])} | {fmt(p['p95_s'])} | {fmt(p['max_s'])} | "
            f"{p['completion_tokens']} |"
        )
    lines += ["", "Throughput with batching over the same requests sent one at a time:", ""]
    lines += [f"- {m}: {fmt(s, 1)}×" for m, s in report["speedup"].items()]
    lines += ["", f"Peak RSS of the server: {fmt(report.get('peak_rss_mb'), 0)} MB", ""]
    term = report.get("sigterm")
    if term:
        errors = ", ".join(f"{k}: {v}" for k, v in term["errors"].items()) or "none"
        lines += [
            f"SIGTERM {spec['sigterm_after_s']:g}s into a load of {term['clients']} clients on {term['model']}: "
            f"{term['ok']} requests answered during that load; over the server's life it accepted "
            f"{term['server_accepted']} requests and answered {term['server_answered']}, clients received "
            f"{term['client_answers_total']} answers; lost: {term['lost']}; errors after the signal: {errors}; "
            f"exit code {term['exit_code']}.",
            "",
        ]
    return "\n".join(lines)
