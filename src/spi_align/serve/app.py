"""The HTTP routes: OpenAI's `/v1/models`, `/v1/chat/completions`, `/v1/completions`, plus `/health` and `/metrics`.

`model` names the method (`sample`, `bon-N`, `spi-k`: whatever the servable offers). Chat messages go through the
policy's chat template as one conversation; a text completion's prompt is one user instruction, formatted as the
policy formats every prompt (as in `spi run`). The search picks a whole answer at the end, so `stream: true` sends
OpenAI's chunks (role, content, finish reason, optional usage, `[DONE]`) once the answer is chosen.

`usage.completion_tokens` counts every token the search generated for the request (all candidates of all its
prompts), not only the answer's; `usage.prompt_tokens` counts each prompt once. With `return_trace: true` each
choice carries the extra field `trace`: the answer's whole record (`SearchResult.to_record()`: every candidate with
its reward, and the tree the search recorded); in a stream, on the choice's last chunk. Every error is OpenAI's error
object with a 4xx status (a server fault is a 500 with the same shape, never a traceback).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.serve.batcher import Answer, Batcher, BatchKey, Job, QueueFull
from spi_align.serve.config import ServeConfig
from spi_align.serve.metrics import Metrics
from spi_align.serve.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    Message,
    parse_request,
)
from spi_align.serve.servable import Servable

log = logging.getLogger(__name__)

OWNER = "spi_align"


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class Server:
    """State shared by the routes: the servable, its methods, the batcher, metrics and counters."""

    def __init__(self, servable: Servable, cfg: ServeConfig) -> None:
        self.servable, self.cfg = servable, cfg
        self.policy = servable.policy
        self.methods = list(servable.available_methods())
        self.created = int(time.time())
        self.metrics = Metrics()
        self.batcher = Batcher(servable, cfg, self.metrics)
        # the worker thread pads with the policy's tokenizer; counting prompt tokens here uses a copy of it
        self.tokenizer = copy.deepcopy(self.policy.tokenizer)
        gen = self.policy.gen
        self.default_max_tokens = min(gen.max_new_tokens, cfg.max_tokens)
        self.default_temperature = gen.temperature if gen.do_sample else 0.0
        self.default_top_p = gen.top_p
        self.accepted = 0
        """Requests queued for a search."""
        self.answered = 0
        """Accepted requests whose answer was sent (or, streaming, whose answer was ready to send)."""

    # ---- requests into jobs -------------------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        if not self.cfg.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.cfg.api_key.encode())
        if not valid:
            raise ApiError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    async def read_json(self, request: Request) -> Any:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None

    def key_for(self, req: GenerationRequest, prompts: int) -> BatchKey:
        """The batch key of a request, every setting checked against the server's caps."""
        if req.model not in self.methods:
            raise ApiError(
                404,
                f"the model '{req.model}' does not exist here (available: {', '.join(self.methods)})",
                param="model",
                code="model_not_found",
            )
        max_tokens = req.requested_max_tokens() or self.default_max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        if max_tokens > self.cfg.max_tokens:
            raise ApiError(
                400,
                f"'{param}' is {max_tokens}; this server allows at most {self.cfg.max_tokens}",
                param=param,
                code="invalid_value",
            )
        if req.n > self.cfg.max_n:
            raise ApiError(
                400, f"'n' is {req.n}; this server allows at most {self.cfg.max_n}", param="n", code="invalid_value"
            )
        if req.n * prompts > self.cfg.max_batch:
            raise ApiError(
                400,
                f"n × prompts is {req.n * prompts}; this server allows at most {self.cfg.max_batch}",
                param="n",
                code="invalid_value",
            )
        for name, cap in (
            ("width", self.cfg.max_width),
            ("successors", self.cfg.max_successors),
            ("chunk", self.cfg.max_chunk),
        ):
            value = getattr(req, name)
            if value is not None and value > cap:
                raise ApiError(
                    400, f"'{name}' is {value}; this server allows at most {cap}", param=name, code="invalid_value"
                )
        if (req.width or 1) * (req.successors or 1) > self.cfg.max_candidates:
            raise ApiError(
                400, f"width × successors may be at most {self.cfg.max_candidates}", param="width", code="invalid_value"
            )
        stops = req.stop_strings()
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "'stop' takes at most 4 non-empty strings", param="stop", code="invalid_value")
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "'stream_options' needs 'stream': true", param="stream_options", code="invalid_value")
        return BatchKey(
            method=req.model,
            width=req.width,
            successors=req.successors,
            chunk=req.chunk,
            max_tokens=max_tokens,
            temperature=self.default_temperature if req.temperature is None else req.temperature,
            top_p=self.default_top_p if req.top_p is None else req.top_p,
            seed=req.seed,
        )

    def chat_prompt(self, messages: list[Message], rid: str) -> Prompt:
        """The conversation as one prompt: the last message is the user's, the earlier ones its history."""
        if messages[-1].role != "user":
            raise ApiError(400, "the last message must be the user's", param="messages", code="invalid_value")
        turns = [("system" if m.role == "developer" else m.role, m.text()) for m in messages]
        if len(turns) > 1 and not self.policy.chat_template:
            raise ApiError(
                400,
                "this model has no chat template: send a single user message",
                param="messages",
                code="invalid_value",
            )
        return Prompt(id=rid, text=turns[-1][1], history=tuple(turns[:-1]))

    def prompt_tokens(self, prompt: Prompt, max_tokens: int, param: str) -> int:
        try:
            count = len(self.policy.prompt_ids([prompt], self.tokenizer)[0])
        except Exception as exc:  # e.g. a chat template that refuses this order of roles
            raise ApiError(
                400, f"the messages do not fit the model's chat template ({exc})", param=param, code="invalid_value"
            ) from None
        left = self.policy.context_left(count)
        if left is not None and max_tokens > left:
            raise ApiError(
                400,
                f"this model's context is {count + left} tokens; the prompt has {count} and max_tokens is {max_tokens}",
                param=param,
                code="context_length_exceeded",
            )
        return count

    # ---- running a job ------------------------------------------------------------------------------------------

    def submit(
        self, key: BatchKey, prompts: list[Prompt], trace: bool = False
    ) -> tuple[Job, asyncio.Future[list[Answer]]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Answer]] = loop.create_future()

        def settle(outcome: list[Answer] | BaseException) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        def deliver(outcome: list[Answer] | BaseException) -> None:
            loop.call_soon_threadsafe(settle, outcome)

        job = Job(key, prompts, deliver, deadline=time.monotonic() + self.cfg.request_timeout_s, trace=trace)
        try:
            self.batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(
                503,
                f"the server is busy ({exc}); retry later",
                code="server_busy",
                kind="server_error",
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            ) from None
        self.accepted += 1
        self.metrics.in_flight.inc()
        return job, future

    async def wait(self, job: Job, future: asyncio.Future[list[Answer]], request: Request | None) -> list[Answer]:
        """The job's answers; ClientGone when `request`'s client disconnects first; ApiError when it fails."""
        remaining = max(job.deadline - time.monotonic(), 0.0)
        watch = asyncio.ensure_future(disconnected(request)) if request is not None else None
        waiting: set[asyncio.Future[Any]] = {future} if watch is None else {future, watch}
        try:
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watch is not None:
                watch.cancel()
        if future not in done:
            job.cancelled = True
            if watch is not None and watch in done:
                self.metrics.dropped.labels("disconnected").inc()
                raise ClientGone
            self.metrics.dropped.labels("timeout").inc()
            raise ApiError(504, f"no answer within {self.cfg.request_timeout_s:g}s", code="timeout")
        try:
            return future.result()
        except TimeoutError:
            raise ApiError(504, f"no answer within {self.cfg.request_timeout_s:g}s", code="timeout") from None
        except SpiError as exc:
            raise ApiError(400, str(exc), code="invalid_request") from None
        except Exception:
            log.exception("search failed")
            raise ApiError(500, "the search failed; see the server log", code="internal_error") from None


async def disconnected(request: Request | None) -> None:
    """Returns when the client closes its connection (the request body has been read by then)."""
    if request is None:
        await asyncio.Event().wait()
        return
    while (await request.receive())["type"] != "http.disconnect":
        pass


def finish_reason(answer: Answer, text: str) -> str:
    return "stop" if answer.finished or len(text) < len(answer.text) else "length"


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the first stop string (OpenAI leaves the stop string out)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def usage(prompt_tokens: int, answers: list[Answer]) -> dict[str, int]:
    generated = sum(a.tokens_generated for a in answers)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def create_app(servable: Servable, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app serving `servable` (its worker thread starts and stops with the app's lifespan)."""
    server = Server(servable, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        log.info("serving %s", ", ".join(server.methods))
        try:
            yield
        finally:
            server.batcher.stop()
            log.info("stopped after answering %d of %d accepted requests", server.answered, server.accepted)

    app = FastAPI(title="spi_align", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if not exc.counted:
            server.metrics.refused.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, exc)
        return JSONResponse(ApiError(500, "internal server error").body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": server.methods, "queue": len(server.batcher.queue)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.check_key(request)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": server.created, "owned_by": OWNER}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        return {"object": "list", "data": [model_card(m) for m in server.methods]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        server.check_key(request)
        if name not in server.methods:
            raise ApiError(404, f"the model '{name}' does not exist here", param="model", code="model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        server.check_key(request)
        req = parse_request(ChatRequest, await server.read_json(request))
        key = server.key_for(req, 1)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        prompt = server.chat_prompt(req.messages, rid)
        prompt_tokens = server.prompt_tokens(prompt, key.max_tokens, "messages")
        prompts = [Prompt(f"{rid}-{i}", prompt.text, history=prompt.history) for i in range(req.n)]
        return await respond(request, "chat", req, key, prompts, prompt_tokens, rid)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        server.check_key(request)
        req = parse_request(CompletionRequest, await server.read_json(request))
        texts = req.prompts()
        key = server.key_for(req, len(texts))
        rid = f"cmpl-{uuid.uuid4().hex}"
        prompts = [Prompt(f"{rid}-{i}-{j}", t) for i, t in enumerate(texts) for j in range(req.n)]
        prompt_tokens = sum(server.prompt_tokens(p, key.max_tokens, "prompt") for p in prompts[:: req.n])
        return await respond(request, "text", req, key, prompts, prompt_tokens, rid)

    async def respond(
        request: Request,
        kind: str,
        req: GenerationRequest,
        key: BatchKey,
        prompts: list[Prompt],
        prompt_tokens: int,
        rid: str,
    ) -> Response:
        start = time.monotonic()
        job, future = server.submit(key, prompts, req.return_trace)
        stops = req.stop_strings()
        head = {"id": rid, "created": server.created, "model": req.model}

        def done(status: int) -> None:
            server.metrics.in_flight.dec()
            server.metrics.requests.labels(kind, req.model, str(status)).inc()
            server.metrics.latency.labels(kind, req.model).observe(time.monotonic() - start)

        def billed() -> None:
            server.answered += 1
            server.metrics.prompt_tokens.labels(req.model).inc(prompt_tokens)

        if not req.stream:
            try:
                answers = await server.wait(job, future, request)
            except ClientGone:
                done(499)
                return Response(status_code=499)
            except ApiError as exc:
                done(exc.status)
                exc.counted = True
                raise
            billed()
            done(200)
            body = completion(kind, head, answers, stops, usage(prompt_tokens, answers), req.return_trace)
            return JSONResponse(body)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[bytes]:
            status = 499  # unless the stream ends normally (a disconnect cancels this generator)
            try:
                for chunk in opening_chunks(kind, head, len(prompts)):
                    yield sse(chunk)
                try:
                    answers = await server.wait(job, future, None)
                except ApiError as exc:
                    status = exc.status
                    yield sse(exc.body())
                    return
                billed()
                for chunk in answer_chunks(kind, head, answers, stops, req.return_trace):
                    yield sse(chunk)
                if include_usage:
                    yield sse(
                        {**head, "object": CHUNK_OBJECT[kind], "choices": [], "usage": usage(prompt_tokens, answers)}
                    )
                yield sse("[DONE]")
                status = 200
            finally:
                if status != 200:
                    job.cancelled = True
                if status == 499 and not future.done():
                    server.metrics.dropped.labels("disconnected").inc()
                done(status)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


CHUNK_OBJECT = {"chat": "chat.completion.chunk", "text": "text_completion"}


def choice(kind: str, index: int, answer: Answer, stops: list[str], trace: bool = False) -> dict[str, Any]:
    """One choice of a whole answer (stop strings cut), with the answer's record as `trace` when asked."""
    text = cut_at_stop(answer.text, stops)
    out: dict[str, Any] = {"index": index}
    out.update({"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text})
    out = {**out, "logprobs": None, "finish_reason": finish_reason(answer, text)}
    return {**out, "trace": answer.record} if trace else out


def completion(
    kind: str,
    head: dict[str, Any],
    answers: list[Answer],
    stops: list[str],
    use: dict[str, int],
    trace: bool = False,
) -> dict[str, Any]:
    """A `chat.completion` or `text_completion` body."""
    choices = [choice(kind, i, a, stops, trace) for i, a in enumerate(answers)]
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {**head, "object": obj, "choices": choices, "usage": use, "system_fingerprint": None}


def opening_chunks(kind: str, head: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Sent at once: each chat choice's role (a text completion has nothing to send before its answer)."""
    if kind != "chat":
        return []
    delta = {"role": "assistant", "content": ""}
    return [
        {
            **head,
            "object": CHUNK_OBJECT[kind],
            "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
        for i in range(count)
    ]


def answer_chunks(
    kind: str, head: dict[str, Any], answers: list[Answer], stops: list[str], trace: bool = False
) -> list[dict[str, Any]]:
    """Each choice's content, then its finish reason (chat); each choice's text with its finish reason (text). The
    record asked for (`trace`) rides on each choice's last chunk."""
    out = []
    for i, answer in enumerate(answers):
        whole = choice(kind, i, answer, stops, trace)
        if kind == "chat":
            pieces = [({"content": whole["message"]["content"]}, None), ({}, whole["finish_reason"])]
            for delta, reason in pieces:
                part = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
                if trace and reason is not None:
                    part["trace"] = whole["trace"]
                out.append({**head, "object": CHUNK_OBJECT[kind], "choices": [part]})
        else:
            out.append({**head, "object": CHUNK_OBJECT[kind], "choices": [whole]})
    return out
