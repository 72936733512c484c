"""The public wire format: OpenAI's chat completion request as we validate it, and the error envelope.

Validation follows OpenAI's ``CreateChatCompletionRequest``: every known parameter is type- and
range-checked, so a bad one is a 400 naming it. What reaches the hoster is the client's own JSON (minus the
routing fields of both dialects, ours and OpenRouter's), never a re-serialization: fields we do not know pass
through untouched.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import uuid
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    field_validator,
    model_validator,
)

from libs.contracts.common import Contract, ParamError
from libs.contracts.openrouter import (
    CONFLICT_SCHEMAS,
    OPENROUTER_FIELDS,
    OUR_ROUTING_FIELDS,
    UNSUPPORTED,
    FallbackModel,
    ProviderPreferences,
    check_conflicts,
    given_fields,
    openrouter_routing,
)
from libs.contracts.routing import RoutingPreferences, Tier

# Removed from the body before it goes to a hoster.
ROUTING_FIELDS = frozenset(OUR_ROUTING_FIELDS + OPENROUTER_FIELDS)


def _whole_number(value: Any) -> Any:
    # JSON Schema's integers include 1.0; strict validation would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer parameter that may be written as a whole float (``16.0``).
Whole = BeforeValidator(_whole_number)
# Bounded so that everything downstream (prices, reservations, bigint columns) stays in range.
MAX_TOKEN_BUDGET = 10_000_000
TokenBudget = Annotated[int, Field(ge=1, le=MAX_TOKEN_BUDGET), Whole]
LatencyMs = Annotated[int, Field(ge=1, le=3_600_000), Whole]
ChoiceCount = Annotated[int, Field(ge=1, le=128), Whole]
TopLogprobs = Annotated[int, Field(ge=0, le=20), Whole]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Whole]
TopK = Annotated[int, Field(ge=-1, le=100_000), Whole]


class _Open(Contract):
    """OpenAI adds fields often; unknown ones are kept, not refused."""

    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Open):
    """``{"type": "text", "text": ...}``."""

    type: Literal["text"]
    text: str


class ImageURL(_Open):
    """An image by URL or data URL."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    """``{"type": "image_url", "image_url": {...}}``."""

    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    """Base64 audio."""

    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Open):
    """``{"type": "input_audio", ...}``."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Open):
    """``{"type": "file", "file": {...}}``."""

    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    """An assistant's refusal, as a content part."""

    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Open):
    """A function the model called: its name and JSON arguments as a string."""

    name: str
    arguments: str


class ToolCall(_Open):
    """One tool call in an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Open):
    """Instructions for the model."""

    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Open):
    """Instructions for the model (newer name of ``system``)."""

    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Open):
    """The user's turn: text, or parts (text, images, audio, files)."""

    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_Open):
    """An earlier answer of the model: content, a refusal, or tool calls."""

    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(_Open):
    """The result of a tool call."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Open):
    """The result of a function call (the deprecated form of ``tool``)."""

    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(_Open):
    """A function the model may call."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    """``{"type": "function", "function": {...}}``."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    """The function a named tool choice forces."""

    name: str


class NamedToolChoice(_Open):
    """Force one function."""

    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Open):
    """Plain text answers."""

    type: Literal["text"]


class JsonObjectFormat(_Open):
    """JSON mode: the answer is a JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(_Open):
    """A named JSON Schema the answer must follow."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Open):
    """Structured outputs."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


HosterId = Annotated[
    str, Field(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
]


class StreamOptions(_Open):
    """``stream_options``: only with ``stream: true``."""

    include_usage: bool = False


# The cross-field rules of ``ChatCompletionRequest._consistent``, for the OpenAPI document (the routing
# dialects' rule, ``CONFLICT_SCHEMAS``, is added to every routed request's).
_CROSS_FIELD_RULES: list[JsonValue] = [
    {
        "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
        "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
    },
    {
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    },
    {
        "if": {
            "required": ["tool_choice"],
            "properties": {"tool_choice": {"type": ["string", "object"], "not": {"const": "none"}}},
        },
        "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
    },
]


class RoutedRequest(_Open):
    """The routing fields, accepted on every endpoint that reaches a hoster: ours (API reference: Routing) and
    OpenRouter's (``libs.contracts.openrouter``)."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"allOf": CONFLICT_SCHEMAS})

    model: str = Field(min_length=1, max_length=256)

    tier: Tier = "balanced"
    privacy_mode: bool = False
    trusted_only: bool = False
    max_latency_ms: LatencyMs | None = None
    fallback_models: list[str] = Field(default_factory=list, max_length=16)
    allow_hosters: list[HosterId] = Field(default_factory=list, max_length=256)
    deny_hosters: list[HosterId] = Field(default_factory=list, max_length=256)
    require_parameters: bool = False
    # OpenRouter's routing dialect.
    provider: ProviderPreferences | None = Field(
        None,
        description="OpenRouter's provider routing preferences. Filters given here and in our own fields all "
        "apply; `sort` with `tier` (or a `:floor`/`:nitro` model suffix) is a 400 naming both; a field the "
        "gateway cannot honour is a 400 naming it.",
    )
    models: list[FallbackModel] | None = Field(
        None,
        max_length=16,
        description="OpenRouter's fallback models, tried in order after `model` and before `fallback_models`.",
    )
    route: Literal["fallback"] | None = Field(None, description="OpenRouter's `route`: `models` are fallbacks.")

    _routing: RoutingPreferences = PrivateAttr(default_factory=RoutingPreferences)
    _routed_model: str = PrivateAttr(default="")

    @field_validator("allow_hosters", "deny_hosters")
    @classmethod
    def _hoster_uuids(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                uuid.UUID(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a hoster UUID") from None
        return [str(uuid.UUID(item)) for item in value]

    @model_validator(mode="after")
    def _one_ranking(self) -> RoutedRequest:
        check_conflicts(given_fields(self.model_fields_set, self.model, self.provider))
        ours = RoutingPreferences.model_validate(self.model_dump(include=set(OUR_ROUTING_FIELDS)))
        self._routed_model, self._routing = openrouter_routing(ours, self.model, self.provider, self.models)
        return self

    def routing(self) -> RoutingPreferences:
        """The routing parameters of this request, from either dialect."""
        return self._routing

    @property
    def routed_model(self) -> str:
        """The model to route: ``model`` without a ``:floor`` / ``:nitro`` suffix."""
        return self._routed_model


class ChatCompletionRequest(RoutedRequest):
    """``POST /v1/chat/completions`` body: OpenAI's parameters, the ones open models add, and routing in our
    dialect or OpenRouter's."""

    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra={"allOf": [*_CROSS_FIELD_RULES, *CONFLICT_SCHEMAS]}
    )

    messages: list[Message] = Field(min_length=1, max_length=4096)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenBudget | None = None
    max_completion_tokens: TokenBudget | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: ChoiceCount | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    seed: Seed | None = None
    user: str | None = Field(None, max_length=512)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Open-model samplers (vLLM, llama.cpp, generalcompute).
    top_k: TopK | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "stream_options is only allowed when stream is true")
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ParamError("tool_choice", "tool_choice is only allowed when tools are specified")
        return self


# Token ids as OpenAI's tokenizers number them (and any open model's: vocabularies stay far below 2^31).
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1), Whole]
# A prompt (or an input to embed): a string, strings, token ids, or lists of token ids (OpenAI's four forms).
PromptInput = (
    Annotated[str, Field(max_length=4_000_000)]
    | Annotated[list[str], Field(min_length=1, max_length=2048)]
    | Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=2048)]
)


# A text completion's cross-field rules, for the OpenAPI document (see ``CompletionRequest._consistent``).
_TEXT_RULES: list[JsonValue] = [
    _CROSS_FIELD_RULES[0],
    {
        "if": {"required": ["best_of"], "properties": {"best_of": {"type": "integer", "minimum": 2}}},
        "then": {"not": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    },
    *CONFLICT_SCHEMAS,
]


# What to embed: as ``PromptInput``, but no input may be empty (OpenAI refuses an empty string).
EmbeddingInput = (
    Annotated[str, Field(min_length=1, max_length=4_000_000)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    | Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=2048)]
)


class CompletionRequest(RoutedRequest):
    """``POST /v1/completions`` body (the legacy text completion API) and our routing."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"allOf": _TEXT_RULES})

    model: str = Field(min_length=1, max_length=256)
    prompt: PromptInput
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenBudget | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: ChoiceCount | None = None
    best_of: ChoiceCount | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), Whole] | None = None
    suffix: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: Seed | None = None
    user: str | None = Field(None, max_length=512)
    top_k: TopK | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of > 1 and self.stream:
            raise ParamError("best_of", "best_of cannot be used with stream")
        return self


class EmbeddingRequest(RoutedRequest):
    """``POST /v1/embeddings`` body and our routing."""

    model: str = Field(min_length=1, max_length=256)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65_536), Whole] | None = None
    user: str | None = Field(None, max_length=512)


def hoster_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The client's body as it sent it, minus our routing fields: what the hoster receives."""
    return {key: value for key, value in payload.items() if key not in ROUTING_FIELDS}


def param_path(payload: Any, loc: tuple[int | str, ...]) -> str | None:
    """OpenAI's name for the parameter at pydantic's error location: ``messages[0].content``.

    Pydantic's locations also name the union member that failed (``user``, ``str``, ``function-after``);
    only the steps that exist in the client's JSON are kept.
    """
    path = ""
    node = payload
    for step in loc:
        if isinstance(node, dict) and isinstance(step, str) and step in node:
            path += f".{step}" if path else step
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            path += f"[{step}]"
            node = node[step]
    return path or None


class ValidationFailure(NamedTuple):
    """A refused request as the client reads it: the message, the parameter at fault and the error code."""

    message: str
    param: str | None
    code: str | None = None


def validation_failure(payload: Any, errors: list[Any]) -> ValidationFailure:
    """The message, parameter and code of the first validation error, OpenAI-style."""
    error = errors[0]
    context = error.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, ParamError):
        return ValidationFailure(f"Invalid value for '{cause.param}': {cause}", cause.param, cause.code)
    param = param_path(payload, tuple(error["loc"]))
    if error["type"] == "missing":
        missing = ".".join(str(s) for s in error["loc"] if not isinstance(s, int))
        message = f"Missing required parameter: '{param + '.' if param else ''}{error['loc'][-1]}'."
        return ValidationFailure(message, param or missing)
    if error["type"] == "extra_forbidden":
        # Only routing objects forbid unknown fields: a wish the gateway cannot honour is refused, not dropped.
        message = f"Unsupported parameter: '{param}'. This gateway cannot honour it, so it does not ignore it."
        return ValidationFailure(message, param, UNSUPPORTED)
    message = str(error["msg"]).removeprefix("Value error, ")
    return ValidationFailure((f"Invalid value for '{param}': {message}" if param else message), param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """The OpenAI error envelope, serialized."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def embedding_vectors(
    data: Any, count: int, width: int | None = None, encoding: Literal["float", "base64"] = "float"
) -> list[Any]:
    """The vectors of an embeddings answer's ``data``, in input order, checked: one per input, each index once,
    each non-empty, of finite numbers, all of one length (``width`` when the request set ``dimensions``), and
    in the ``encoding`` asked for: a list of numbers for ``float``, for ``base64`` the base64 text of
    little-endian float32s (as OpenAI sends it), decoded to be checked. Raises ``ValueError`` saying what is
    wrong."""
    if not isinstance(data, list) or len(data) != count:
        raise ValueError(f"{len(data) if isinstance(data, list) else 'no'} vectors for {count} inputs")
    vectors: dict[int, Any] = {}
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count or index in vectors:
            raise ValueError(f"index {str(index)[:20]} is not one of the {count} inputs")
        numbers = _base64_floats(vector) if encoding == "base64" else vector
        if not isinstance(numbers, list | tuple) or not numbers:
            raise ValueError("a vector is not a list of numbers")
        if not all(type(x) in (float, int) and math.isfinite(x) for x in numbers):
            raise ValueError("a vector holds something other than finite numbers")
        width = width or len(numbers)
        if len(numbers) != width:
            raise ValueError(f"vectors of {len(numbers)} numbers, expected {width}")
        vectors[index] = vector
    return [vectors[i] for i in range(count)]


def _base64_floats(vector: Any) -> tuple[float, ...]:
    """The float32s a base64 vector holds; ``ValueError`` when it is not base64 of whole little-endian float32s."""
    if not isinstance(vector, str):
        raise ValueError("a vector is not base64 text")
    try:
        packed = base64.b64decode(vector, validate=True)
    except binascii.Error as exc:
        raise ValueError("a vector is not base64 text") from exc
    if len(packed) % 4:
        raise ValueError("a base64 vector is not whole float32s")
    return struct.unpack(f"<{len(packed) // 4}f", packed)
