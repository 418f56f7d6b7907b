"""`spi inspect`'s page in a real browser: Debian's chromium, headless, driven over the Chrome DevTools protocol on a
pipe (`--remote-debugging-pipe`: no port, no extra package). The page of a tiny run loads from `file://` without
a JavaScript error (exceptions and console errors are collected the whole time, also while the test sorts,
filters and clicks); its DOM has one row per prompt and, for one prompt, one tree node per recorded chunk; its
screenshot is not blank. `make test` and CI install chromium when it is missing."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spi_align.experiment.inspect_page import inspect_run
from test_inspect import PROMPTS, make_run

MISSING = "chromium not found: install it (`apt-get install -y chromium`; `make test` does when apt is available)"
TIMEOUT = 20.0


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(MISSING)


class Browser:
    """A headless chromium and one page, spoken to over the DevTools pipe (fd 3 in, fd 4 out, NUL-separated JSON).
    Every error the page reports (uncaught exceptions, console.error, error log entries) lands in `errors`."""

    def __init__(self, executable: str, profile: str) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def fds() -> None:  # the child's fds 3 and 4 (dup2 makes them inheritable)
            low, high = os.dup(to_browser), os.dup(from_browser)
            os.dup2(low, 3)
            os.dup2(high, 4)

        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            [executable, *flags],
            preexec_fn=fds,
            close_fds=False,  # fds 3 and 4 are set up in the child; Python's own fds are not inheritable anyway
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=900, deviceScaleFactor=1,
                  mobile=False)  # fmt: skip

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self._event(message)
        return message

    def _event(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        params = message.get("params", {})
        if message["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif message["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif message["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append("log: " + params["entry"].get("text", ""))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + TIMEOUT
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < deadline, "the page did not load"
            self._receive()

    def js(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture
def browser():
    executable = chromium()
    with tempfile.TemporaryDirectory() as profile:
        chrome = Browser(executable, profile)
        try:
            yield chrome
        finally:
            chrome.close()


def test_the_page_runs_in_a_real_browser(browser, tmp_path, tiny_causal_lm, smol_tokenizer):
    run = make_run(tmp_path / "tiny", tiny_causal_lm, smol_tokenizer)
    page = inspect_run(run, "spi-1", tmp_path / "page.html")
    record = json.loads((run / "eval-spi-1.jsonl").read_text().splitlines()[2])
    browser.open(page.as_uri() + "#p=2")

    assert browser.js("document.querySelectorAll('#prompts tbody tr').length") == len(PROMPTS)
    assert browser.js("document.querySelectorAll('svg.tree g.node[data-node]').length") == len(
        record["trace"]["parent"]
    )
    assert browser.js("document.querySelectorAll('svg.tree .node.chosen').length") == 1
    assert browser.js("document.querySelectorAll('#detail .side .cands li').length") == 4  # best-of-4 beside it
    assert browser.js("document.querySelector('#prompts tbody tr:first-child td').textContent") == "0"
    # counts in the run's tables show no decimals (tokens), scores three
    cells = browser.js("[...document.querySelector('table').querySelectorAll('tbody td')].map(c => c.textContent)")
    tokens = json.loads((run / "results.json").read_text())["results"]["spi-1"]["cost"]["tokens_generated"]
    assert str(tokens) in cells and f"{tokens}.000" not in cells
    # clicking a chunk shows the response up to it; sorting and filtering work from the headers and buttons
    chosen = record["trace"]["chosen"]
    browser.js(
        f"document.querySelector('svg.tree .node[data-node=\"{chosen}\"]').dispatchEvent(new MouseEvent('click'))"
    )
    assert browser.js("document.querySelector('#info .text').textContent") == record["response"]
    browser.js("document.querySelector('#prompts th[data-key=\"index\"]').click()")  # the same column again: descending
    assert browser.js("document.querySelector('#prompts tbody tr:first-child td').textContent") == str(len(PROMPTS) - 1)
    data = json.loads(browser.js("document.getElementById('data').textContent"))
    wins = sum(p["outcome"] == "win" for p in data["prompts"])
    browser.js("document.querySelector('#filters button[data-filter=\"win\"]').click()")
    assert browser.js("document.querySelectorAll('#prompts tbody tr').length") == wins
    browser.js("document.querySelector('#detail').scrollIntoView()")
    image = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("L"), dtype=float)
    (tmp_path / "page.png").write_bytes(browser.screenshot())
    assert image.shape == (900, 1280) and image.std() > 20  # not a blank page
    assert browser.errors == []
