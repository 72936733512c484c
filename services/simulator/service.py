"""The simulator's domain: what a request asks for, the deterministic reply, and OpenAI's response shapes.

No I/O here. The reply to a prompt is always the same words, so tests and benchmarks can compare runs; the
dicts built here are exactly what OpenAI sends, ready for ``orjson.dumps``.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

Fault = Literal["none", "error", "hang", "disconnect"]
FinishReason = Literal["stop", "length"]

SYSTEM_FINGERPRINT = "fp_simulator"
DONE_EVENT = b"data: [DONE]\n\n"

WORDS: tuple[str, ...] = (
    "the", "model", "answers", "with", "simulated", "tokens", "while", "gateway", "routes", "every",
    "request", "to", "a", "hoster", "that", "streams", "words", "back", "in", "order", "and", "counts",
    "usage", "for", "billing", "so", "tests", "see", "steady", "replies", "under", "load", "from", "many",
    "clients", "at", "once", "when", "network", "is", "fast", "or", "slow", "each", "chunk", "arrives",
    "as", "plain", "text", "of", "this", "small", "language", "without", "any", "real", "weights", "behind",
    "it", "compute", "share", "sample", "latency", "budget",
)  # fmt: skip


class SimulatorOverride(BaseModel):
    """The optional ``simulator`` field of a request: behaviour for this request only.

    A fault named here always happens, whatever the configured fault rate.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    reply_tokens: int | None = Field(None, ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    fault: Fault | None = None
    fault_status: int | None = Field(None, ge=400, le=599)
    fault_after_tokens: int | None = Field(None, ge=0)


class StreamOptions(BaseModel):
    """``stream_options`` of a streaming request."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parts of ``POST /v1/chat/completions`` the simulator reads; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    simulator: SimulatorOverride | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @property
    def token_cap(self) -> int | None:
        """The client's cap on completion tokens; ``max_completion_tokens`` wins over the legacy name."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulator serves one request: timing, reply length and the fault to inject."""

    reply_tokens: int
    ttft_ms: float
    tokens_per_second: float
    fault: Fault
    fault_status: int
    fault_after_tokens: int

    @property
    def ttft_s(self) -> float:
        """Time to first token in seconds."""
        return self.ttft_ms / 1000

    @property
    def token_interval_s(self) -> float:
        """Seconds between two tokens; 0 sends them back to back."""
        return 1 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    def generation_s(self, tokens: int) -> float:
        """How long ``tokens`` take after the first one, as a stream paces them."""
        return max(tokens - 1, 0) * self.token_interval_s


def resolve_behaviour(
    defaults: Behaviour, fault_rate: float, override: SimulatorOverride | None, roll: float
) -> Behaviour:
    """The behaviour for one request: the configured one, its fault kept only when ``roll < fault_rate``.

    ``roll`` is a uniform draw in [0, 1). A per-request override replaces the fields it sets, and a fault it
    names is forced.
    """
    fault: Fault = defaults.fault if roll < fault_rate else "none"
    if override is None:
        return defaults if fault == defaults.fault else replace(defaults, fault=fault)
    return replace(defaults, **{"fault": fault, **override.model_dump(exclude_none=True)})


@dataclass(frozen=True, slots=True)
class Reply:
    """The completion the simulator will send for one request."""

    tokens: list[str]
    finish_reason: FinishReason
    prompt_tokens: int

    @property
    def content(self) -> str:
        """The whole reply text."""
        return "".join(self.tokens)

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` object for this reply."""
        return usage(self.prompt_tokens, len(self.tokens))


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of each message: its string content, or the ``text`` parts of a content list."""
    texts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return texts


def estimate_prompt_tokens(texts: list[str]) -> int:
    """About four characters per token, as OpenAI's rule of thumb; never less than one."""
    return max(1, sum(len(text) for text in texts) // 4)


def reply_tokens(texts: list[str], count: int) -> list[str]:
    """``count`` words chosen by a generator seeded with the prompt; every word but the first has a space.

    The same prompt always gets the same words, and a shorter reply is a prefix of a longer one.
    """
    digest = hashlib.blake2b("\x1e".join(texts).encode(), digest_size=8).digest()
    words = random.Random(int.from_bytes(digest, "big")).choices(WORDS, k=count)
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def plan_reply(request: ChatCompletionRequest, reply_length: int) -> Reply:
    """The reply: ``reply_length`` tokens, cut to the client's cap with ``finish_reason`` "length"."""
    texts = message_texts(request.messages)
    cap = request.token_cap
    count = reply_length if cap is None else min(reply_length, cap)
    finish_reason: FinishReason = "length" if count < reply_length else "stop"
    return Reply(reply_tokens(texts, count), finish_reason, estimate_prompt_tokens(texts))


@dataclass(frozen=True, slots=True)
class CompletionMeta:
    """The fields every chunk of one completion repeats."""

    id: str
    created: int
    model: str


def new_completion(model: str) -> CompletionMeta:
    """A fresh completion id, ``chatcmpl-sim-`` and 32 hex digits, created now."""
    return CompletionMeta("chatcmpl-sim-" + uuid.uuid4().hex, int(time.time()), model)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(meta: CompletionMeta, reply: Reply) -> dict[str, Any]:
    """A ``chat.completion`` object: the whole reply and its usage."""
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": reply.usage(),
    }


def completion_chunk(
    meta: CompletionMeta,
    delta: dict[str, str],
    finish_reason: FinishReason | None = None,
    *,
    include_usage: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice; with ``include_usage`` it carries ``"usage": null``."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(meta: CompletionMeta, reply: Reply) -> dict[str, Any]:
    """The last chunk of a stream that asked for usage: no choices, only ``usage``."""
    return {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": reply.usage(),
    }


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_envelope(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body.

    The simulator stands in for a third-party server, so it writes OpenAI's format itself rather than
    sharing the gateway's contract code: a drift in that code then shows up as a failing test.
    """
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
