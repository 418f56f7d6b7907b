"""`spi serve`: an improved policy behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

- `servable.py`: what is served (`Servable`: a policy and its methods by name, e.g. `spi.ImprovedPolicy`).
- `config.py`: the server's settings (`ServeConfig`: address, key, batching, queue, caps).
- `schemas.py`: OpenAI request bodies, validated, and OpenAI-style error objects.
- `batcher.py`: dynamic batching: concurrent requests with the same settings become one search, in one thread.
- `app.py`: the routes (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`, `/metrics`).
- `server.py`: `serve(servable, cfg)`: binding rules, uvicorn, graceful SIGTERM.
- `load.py`: an async load generator that writes a report (`scripts/serve_load.py` runs it).
"""

from spi_align.serve.config import ServeConfig
from spi_align.serve.servable import Servable

__all__ = ["Servable", "ServeConfig"]
