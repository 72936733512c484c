"""OpenAI's response shapes for a simulated reply: the whole completion, stream chunks and errors.

The dicts built here are exactly what OpenAI sends, ready for ``orjson.dumps``; per token a chunk is a plain
dict, never a model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from services.simulator.service import Choice, FinishReason, Reply, ToolCall

SYSTEM_FINGERPRINT = "fp_simulator"
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class CompletionMeta:
    """The fields every chunk of one completion repeats."""

    id: str
    created: int
    model: str


def new_completion(model: str) -> CompletionMeta:
    """A fresh completion id, ``chatcmpl-sim-`` and 32 hex digits, created now."""
    return CompletionMeta("chatcmpl-sim-" + uuid.uuid4().hex, int(time.time()), model)


def completion(meta: CompletionMeta, reply: Reply) -> dict[str, Any]:
    """A ``chat.completion`` object: every choice whole, and the usage."""
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [_completion_choice(choice) for choice in reply.choices],
        "usage": reply.usage(),
    }


def _completion_choice(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.reasoning:
        message["reasoning_content"] = "".join(choice.reasoning)
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in choice.tool_calls
        ]
    return {
        "index": choice.index,
        "message": message,
        "logprobs": None if choice.logprobs is None else {"content": choice.logprobs, "refusal": None},
        "finish_reason": choice.finish_reason,
    }


def completion_chunk(
    meta: CompletionMeta,
    delta: dict[str, Any],
    finish_reason: FinishReason | None = None,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice; with ``include_usage`` it carries ``"usage": null``."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def choice_chunks(meta: CompletionMeta, choice: Choice, *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The chunks of one choice before its finish: the one that opens it, then one per token step.

    Text opens with ``{"role": "assistant", "content": ""}``; reasoning deltas come first, then content deltas,
    each carrying the logprobs of its token when they were asked for. Tool calls stream as OpenAI does: the
    first delta of a call has its id and name, the next ones pieces of its arguments.
    """
    index = choice.index
    calls = choice.tool_calls
    role_in_first_call = bool(calls) and not choice.reasoning
    if not role_in_first_call:
        opening = {"role": "assistant", "content": None if calls else ""}
        yield completion_chunk(meta, opening, index=index, include_usage=include_usage)
    for token in choice.reasoning:
        yield completion_chunk(meta, {"reasoning_content": token}, index=index, include_usage=include_usage)
    for position, call in enumerate(calls):
        start = _tool_call_start(position, call)
        if position == 0 and role_in_first_call:
            start = {"role": "assistant", "content": None, **start}
        yield completion_chunk(meta, start, index=index, include_usage=include_usage)
        for piece in call.argument_pieces():
            delta = {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
            yield completion_chunk(meta, delta, index=index, include_usage=include_usage)
    if choice.logprobs is None:
        for token in choice.tokens:
            yield completion_chunk(meta, {"content": token}, index=index, include_usage=include_usage)
        return
    for token, entry in zip(choice.tokens, choice.logprobs, strict=True):
        logprobs = {"content": [entry], "refusal": None}
        yield completion_chunk(meta, {"content": token}, index=index, logprobs=logprobs, include_usage=include_usage)


def _tool_call_start(position: int, call: ToolCall) -> dict[str, Any]:
    return {
        "tool_calls": [
            {"index": position, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        ]
    }


def finish_chunk(meta: CompletionMeta, choice: Choice, *, include_usage: bool) -> dict[str, Any]:
    """The chunk that ends one choice: an empty delta and its finish reason."""
    return completion_chunk(meta, {}, choice.finish_reason, index=choice.index, include_usage=include_usage)


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
