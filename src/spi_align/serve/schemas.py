"""OpenAI request bodies, validated strictly, and OpenAI-style error objects.

Fields are OpenAI's. Honoured: `model` (the method), `max_tokens` / `max_completion_tokens`, `temperature` (0 =
greedy), `top_p`, `seed`, `n`, `stop` (answers are cut before the first stop string), `stream`,
`stream_options.include_usage`; `user`, `metadata`, `store` and `service_tier` are accepted and ignored. SPI's
beam shape is set by the extra fields `width` (W), `successors` (K) and `chunk` (L); the extra field `return_trace`
asks for each answer's whole record (candidates and the search's tree) beside it. Fields the server cannot honour
(log-probs, penalties, logit bias, tools, JSON mode, echo, suffix, best_of, token-id prompts) are refused with a
400 that names the field when they ask for anything but the default; any other unknown field is refused too.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An HTTP error answered with OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or default_kind(status)
        self.headers = headers or {}
        self.counted = False
        """True once the request was counted as accepted and answered (`spi_requests_total`)."""

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def default_kind(status: int) -> str:
    """OpenAI's error type for an HTTP status."""
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
    return kinds.get(status, "invalid_request_error" if status < 500 else "server_error")


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False
    """Send one last chunk with the request's usage (and no choices)."""


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message; other keys OpenAI clients echo back (e.g. `refusal`: null) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class GenerationRequest(Strict):
    """What chat and text completions share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    width: int | None = Field(None, ge=1)
    """SPI's beam width W (kept parents per prompt)."""
    successors: int | None = Field(None, ge=1)
    """SPI's successors per parent K."""
    chunk: int | None = Field(None, ge=1)
    """SPI's chunk length L (tokens between value-guided selections)."""
    return_trace: bool = False
    """Return each answer's record (`SearchResult.to_record`: every candidate with its reward, and the tree the search
    recorded, `trace`) as the choice's extra field `trace`; off by default."""
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> str | None:
        """The first field that asks for something this server cannot do, or None."""
        if self.presence_penalty:
            return "presence_penalty"
        if self.frequency_penalty:
            return "frequency_penalty"
        if self.logit_bias:
            return "logit_bias"
        return None


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        if self.logprobs or self.top_logprobs:
            return "logprobs" if self.logprobs else "top_logprobs"
        if self.tools:
            return "tools"
        if self.tool_choice not in (None, "none", "auto"):
            return "tool_choice"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return super().unsupported()


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1, self.n):
            return "best_of"
        if self.logprobs is not None:
            return "logprobs"
        return super().unsupported()


R = TypeVar("R", bound=GenerationRequest)


def parse_request(model: type[R], data: Any) -> R:
    """The validated request, or an ApiError(400) naming the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, data) from None
    field = request.unsupported()
    if field is not None:
        raise ApiError(
            400, f"'{field}' is not supported by this server (leave it out)", param=field, code="unsupported_parameter"
        )
    if isinstance(request, CompletionRequest) and not request.prompts():
        raise ApiError(400, "'prompt' must not be empty", param="prompt")
    return request


def validation_error(err: ValidationError, data: dict[str, Any]) -> ApiError:
    """OpenAI's shape for a validation failure: the first error, its field as `param`."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # a union reports one error per member; name the field, not the member type
    field = ".".join(p for p in loc if not p.startswith(("str", "list[", "dict[", "int", "float", "bool")))
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {field}", param=field, code="unknown_parameter")
    if first["type"] == "missing":
        return ApiError(400, f"missing required parameter: '{field}'", param=field, code="missing_required_parameter")
    if (
        field == "prompt"
        and isinstance(data.get("prompt"), list)
        and data["prompt"]
        and not isinstance(data["prompt"][0], str)
    ):
        return ApiError(
            400, "'prompt' as token ids is not supported: send text", param="prompt", code="unsupported_parameter"
        )
    return ApiError(400, f"invalid value for '{field}': {first['msg']}", param=field, code="invalid_value")
