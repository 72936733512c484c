"""The public wire format: OpenAI's chat completion request as we validate it, and the error envelope.

Fields we do not know are kept (``extra="allow"``) and passed on to the hoster untouched.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.contracts.routing import RoutingPreferences, Tier

ROUTING_FIELDS = frozenset(RoutingPreferences.model_fields)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    """One message of the conversation; content is text, a list of content parts, or null."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    """``stream_options``: only meaningful with ``stream: true``."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body: OpenAI's parameters plus our routing parameters."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    tier: Tier = "balanced"
    privacy_mode: bool = False
    trusted_only: bool = False
    max_latency_ms: int | None = Field(None, ge=1)
    fallback_models: list[str] = Field(default_factory=list, max_length=16)
    allow_hosters: list[str] = Field(default_factory=list)
    deny_hosters: list[str] = Field(default_factory=list)

    @field_validator("allow_hosters", "deny_hosters")
    @classmethod
    def _hoster_uuids(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                uuid.UUID(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a hoster UUID") from None
        return [str(uuid.UUID(item)) for item in value]

    def routing(self) -> RoutingPreferences:
        """The routing parameters of this request."""
        return RoutingPreferences.model_validate(self.model_dump(include=set(ROUTING_FIELDS)))

    def hoster_body(self) -> dict[str, Any]:
        """The body as the client sent it, minus our routing fields: what the hoster receives."""
        return self.model_dump(exclude=set(ROUTING_FIELDS), exclude_unset=True)


ErrorType = Literal[
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "insufficient_quota", "server_error", "service_unavailable",
]  # fmt: skip


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """The OpenAI error envelope, serialized."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
