"""The ingress's OpenAPI document: the request body we validate and every response we send, so clients
(and schemathesis in ``make test``) can hold us to it. Response models are documentation only: handlers
write bytes, these describe them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from libs.contracts.billing import GenerationRecord
from libs.contracts.management import Label
from libs.contracts.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from libs.contracts.responses import ResponsesRequest


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """Every error the API returns."""

    error: ErrorDetail


class CompletionMessage(_Doc):
    """The assistant's answer."""

    role: str
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_content: str | None = None


class CompletionChoice(_Doc):
    """One choice of a completion."""

    index: int
    message: CompletionMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class PromptTokensDetails(_Doc):
    """Of the prompt tokens, those the hoster served from its cache (never more than ``prompt_tokens``)."""

    cached_tokens: int = Field(ge=0)


class CompletionTokensDetails(_Doc):
    """Of the completion tokens, those the model spent reasoning (never more than ``completion_tokens``)."""

    reasoning_tokens: int = Field(ge=0)


class CostDetails(_Doc):
    """How ``cost`` splits: the hoster's share, in credits (the rest is the platform fee)."""

    upstream_inference_cost: float


class CompletionUsage(_Doc):
    """Tokens as the hoster reported them, held to the request's bounds (``estimated`` when it reported none),
    the details it reported held to their counts, and the cost in credits."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    cost: float | None = None
    cost_details: CostDetails | None = None
    estimated: bool | None = None


class ChatCompletion(_Doc):
    """A non-streaming answer (``stream: true`` answers with ``text/event-stream`` chunks instead)."""

    id: str
    object: str = Field(examples=["chat.completion"])
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class TextChoice(_Doc):
    """One choice of a text completion."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class TextCompletion(_Doc):
    """A text completion (``stream: true`` answers with ``text/event-stream`` events of the same shape)."""

    id: str
    object: str = Field(examples=["text_completion"])
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class EmbeddingVector(_Doc):
    """One input's vector: floats, or base64 of little-endian float32s with ``encoding_format: base64``."""

    object: str = Field(examples=["embedding"])
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Doc):
    """Input tokens (``estimated`` when the hoster reported none) and the cost in credits."""

    prompt_tokens: int
    total_tokens: int
    cost: float | None = None
    estimated: bool | None = None


class EmbeddingList(_Doc):
    """The embeddings of every input, in input order."""

    object: str = Field(examples=["list"])
    data: list[EmbeddingVector]
    model: str
    usage: EmbeddingUsage


class Pricing(_Doc):
    """Price range over a model's live hosters, credits per million tokens."""

    unit: str
    input: dict[str, float]
    output: dict[str, float]


class ModelEntry(_Doc):
    """A model live on the network."""

    id: str
    object: str
    created: int
    owned_by: str
    hosters: int
    context_length: int | None
    endpoints: list[str] = Field(description="the API paths it is served on", examples=[["/v1/chat/completions"]])
    pricing: Pricing
    usage_verified: bool = Field(
        description="registered with its tokenizer: the network counts its tokens (else 'usage not verified': "
        "a hoster's report is held to byte bounds only)"
    )
    verified_hosters: int = Field(
        description="its live hosters whose spot checks verified that they serve these weights (its reference "
        "hosters included)"
    )
    has_reference: bool = Field(
        description="the operator designated reference hosters for it: trusted_only then routes only to verified "
        "hosters"
    )


class ModelList(_Doc):
    """``GET /v1/models``."""

    object: str
    data: list[ModelEntry]


class Credits(_Doc):
    """The key's account, in credits."""

    object: str
    account_id: str
    balance: float
    reserved: float
    spent_today: float
    daily_cap: float | None


class KeyRateLimit(_Doc):
    """The key's rate limits per ``interval``; -1 is no limit."""

    requests: int
    tokens: int
    interval: str


class KeyData(_Doc):
    """The calling key, as OpenRouter's ``GET /api/v1/key`` shows one; amounts in credits."""

    label: str = Field(description="The key's first characters")
    limit: float | None = Field(description="The account's daily spend cap; null without one")
    limit_reset: str | None = Field(description='"daily" when there is a daily cap')
    limit_remaining: float = Field(description="What the key can spend now: the balance, within the daily cap")
    include_byok_in_limit: bool
    usage: float = Field(description="Credits charged to this key, all time")
    usage_daily: float = Field(description="... this UTC day")
    usage_weekly: float = Field(description="... this UTC week (from Monday)")
    usage_monthly: float = Field(description="... this UTC month")
    byok_usage: float
    byok_usage_daily: float
    byok_usage_weekly: float
    byok_usage_monthly: float
    is_free_tier: bool
    is_provisioning_key: bool
    is_management_key: bool
    expires_at: str | None
    rate_limit: KeyRateLimit


class KeyDocument(_Doc):
    """``GET /v1/key``."""

    data: KeyData


class UsageEntry(_Doc):
    """One recent request of the account."""

    id: str
    model: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    created: int


class UsageList(_Doc):
    """``GET /v1/usage``."""

    object: str
    data: list[UsageEntry]


class ApiKey(_Doc):
    """One key of the account, as its management key sees it: never the key itself."""

    id: str
    object: str = Field(examples=["api_key"])
    label: str | None
    prefix: str = Field(description="The key's first characters")
    kind: str = Field(description='"inference" (calls models) or "management" (manages the account)')
    rpm: int | None = Field(description="Requests per minute; null: no limit")
    tpm: int | None = Field(description="Tokens per minute; null: no limit")
    created: int
    revoked: bool
    revoked_at: int | None
    last_used_at: int | None = Field(description="When a request made with it was last admitted; null: never")


class ApiKeyList(_Doc):
    """``GET /v1/keys``: every key of the account, newest first, revoked ones included."""

    object: str = Field(examples=["list"])
    data: list[ApiKey]


class ApiKeyDocument(_Doc):
    """One key of the account."""

    data: ApiKey


class CreatedApiKey(_Doc):
    """``POST /v1/keys``: the new inference key, shown this once (only its SHA-256 is kept), and its record."""

    key: str
    data: ApiKey


class RevokedApiKey(_Doc):
    """``DELETE /v1/keys/{key_id}``: the key, revoked (revoking again changes nothing)."""

    deleted: bool
    data: ApiKey


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer")  # pydantic would take true as 1
    return value


# A rate limit as a client sends it: a whole number (``60.0`` too, as JSON Schema's integer allows), never ``true``.
Limit = Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_not_a_boolean)]


class NewKey(BaseModel):
    """A new inference key: an optional label and limits (no limit when absent)."""

    model_config = ConfigDict(extra="forbid")

    label: Label | None = None
    rpm: Limit | None = Field(None, description="Requests per minute")
    tpm: Limit | None = Field(None, description="Tokens per minute")


class KeyChange(BaseModel):
    """What to change of a key: only the fields sent change; ``null`` clears one (no limit, no label)."""

    model_config = ConfigDict(extra="forbid")

    label: Label | None = None
    rpm: Limit | None = Field(None, description="Requests per minute")
    tpm: Limit | None = Field(None, description="Tokens per minute")


class Account(_Doc):
    """``GET /v1/account``: the account's money now, in credits."""

    object: str = Field(examples=["account"])
    id: str
    name: str
    balance: float
    reserved: float = Field(description="Held by open requests")
    spent_today: float = Field(description="Charges and open holds of this UTC day, as the daily cap counts")
    daily_cap: float | None
    created: int


class UsageDay(_Doc):
    """One UTC day of the account's requests (by the day each was admitted); ``spend`` in credits."""

    date: str = Field(examples=["2026-11-29"])
    requests: int
    prompt_tokens: int
    completion_tokens: int
    spend: float


class AccountUsage(_Doc):
    """``GET /v1/account/usage``: every day of the window, oldest first, zeros included."""

    object: str = Field(examples=["list"])
    data: list[UsageDay]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Responses entries for error statuses, all in the OpenAI envelope."""
    described = {
        400: "Invalid request: the message names the parameter",
        401: "Missing, malformed, unknown or revoked API key",
        403: "The wrong kind of key: a management key on a model endpoint, an inference key on a management one",
        402: "Insufficient credits or daily spend cap reached",
        404: "Unknown model, generation, key or route",
        413: "Request body too large",
        415: "Request body is not JSON",
        429: "Rate limit reached; see Retry-After",
        500: "Every hoster failed",
        503: "No hoster (or billing, or router) can serve now; see Retry-After",
    }
    return {s: {"model": ErrorEnvelope, "description": described[s]} for s in statuses}


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The completion, or with stream: true a text/event-stream of chat.completion.chunk events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **errors(400, 401, 402, 403, 404, 413, 415, 429, 500, 503),
}


TEXT_COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": TextCompletion,
        "description": "The completion, or with stream: true a text/event-stream of text_completion events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **errors(400, 401, 402, 403, 404, 413, 415, 429, 500, 503),
}

RESPONSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The Response object (OpenAI's `Response`), or with stream: true a text/event-stream of the "
        "Responses API's typed events",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["id", "object", "status", "output"]}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **errors(400, 401, 402, 403, 404, 413, 415, 429, 500, 503),
}

STORED_RESPONSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The stored response, its deletion, or a page of its input items",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **errors(400, 401, 404, 503),
}

EMBEDDING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": EmbeddingList, "description": "One vector per input"},
    **errors(400, 401, 402, 403, 404, 413, 415, 429, 500, 503),
}

# Each route with a body (path and method) and the model its handler validates the body with. No route declares
# its body as a parameter: FastAPI would read and parse it before the route's key check ran.
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/chat/completions", "post"): ChatCompletionRequest,
    ("/v1/completions", "post"): CompletionRequest,
    ("/v1/embeddings", "post"): EmbeddingRequest,
    ("/v1/responses", "post"): ResponsesRequest,
    ("/v1/keys", "post"): NewKey,
    ("/v1/keys/{key_id}", "patch"): KeyChange,
}


def install_openapi(app: FastAPI) -> None:
    """Document each route's body from the model its handler validates with (the handler reads and parses it
    itself: after the key check, within a limit, for OpenAI-style errors and to pass the client's JSON on
    untouched)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for (path, method), model in REQUEST_BODIES.items():
            request_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request_schema.pop("$defs", {}))
            components[model.__name__] = request_schema
            document["paths"][path][method]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        components["GenerationRecord"] = GenerationRecord.model_json_schema(ref_template="#/components/schemas/{model}")
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
        for path in ("/v1/models", "/v1/models/{model_id}"):
            document["paths"][path]["get"]["security"] = []  # the catalogue is public
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
