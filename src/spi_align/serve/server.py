"""Running the app: binding rules, uvicorn, and a graceful SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops listening, lets every accepted request finish (its batch runs to the end;
queued requests still get their batch) for up to `drain_timeout_s`, then the worker thread stops and the process
exits.
"""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from spi_align.serve.app import create_app
from spi_align.serve.config import ServeConfig, check_binding
from spi_align.serve.servable import Servable

log = logging.getLogger(__name__)


def make_server(servable: Servable, cfg: ServeConfig) -> uvicorn.Server:
    """The uvicorn server for `servable` (not started); refuses a non-loopback address without an API key."""
    check_binding(cfg)
    app = create_app(servable, cfg)
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(cfg.drain_timeout_s),
        lifespan="on",
    )
    return uvicorn.Server(config)


def serve(servable: Servable, cfg: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain in-flight requests and return."""
    server = make_server(servable, cfg)
    log.info("listening on http://%s:%d/v1 (API key %s)", cfg.host, cfg.port, "required" if cfg.api_key else "off")
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn re-raises the signal it drained on once it is done, under the handler it found: make that one a
    # no-op so a graceful SIGTERM ends in a normal return (exit status 0) rather than death by signal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("drained and stopped")
