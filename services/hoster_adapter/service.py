"""Pure logic of an attempt: rewriting upstream chunks, tallying usage, assembling a completion, checking
embeddings, and the report of how the attempt ended. ``upstream.py`` does the I/O and applies these.

What runs per token chunk works on plain dicts and bytes.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from libs.contracts.common import COMPLETIONS, Usage
from libs.contracts.openai import embedding_vectors
from libs.contracts.pricing import client_usage, estimate_prompt_tokens, input_count
from libs.contracts.routing import AttemptDispatch, AttemptFinished, AttemptOutcome


class UpstreamFailure(Exception):
    """The upstream answered with an error, broke off the stream or broke one of the adapter's bounds.

    The message becomes the routing record's error; ``status`` is the upstream's HTTP status, if it sent one;
    ``client_error`` says the upstream refused the client's own parameters.
    """

    def __init__(self, message: str, status: int | None = None, client_error: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.client_error = client_error


class SseDataLines:
    """Splits raw SSE bytes into the payloads of its ``data:`` lines, across reads of any size.

    Working on raw bytes skips httpx's text decoding and line-splitting layers, which cost more per chunk
    than everything else the adapter does. A line longer than ``max_line_bytes`` (one that never ends, say)
    is an ``UpstreamFailure``: at most that much of it is ever held.
    """

    __slots__ = ("_max", "_rest")

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._rest = b""
        self._max = max_line_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Payloads of the ``data:`` lines completed by ``data`` (comments and other fields are skipped)."""
        buffered = self._rest + data
        lines = buffered.split(b"\n")
        self._rest = lines.pop()
        # Only a buffer over the bound can hold a line over it: the common case costs one comparison.
        if len(buffered) > self._max and (len(self._rest) > self._max or any(len(x) > self._max for x in lines)):
            self._rest = b""
            raise UpstreamFailure(f"line_too_long: the upstream sent an SSE line over {self._max} bytes")
        return [line[5:].strip() for line in lines if line.startswith(b"data:")]


class StreamTally:
    """Follows an upstream stream: reported usage, content chunks seen, the finish reason."""

    __slots__ = ("content_chunks", "finish_reason", "reported_usage", "system_fingerprint")

    def __init__(self) -> None:
        self.content_chunks = 0
        self.finish_reason: str | None = None
        self.reported_usage: dict[str, Any] | None = None
        self.system_fingerprint: str | None = None

    def observe(self, chunk: dict[str, Any]) -> None:
        """Take note of one upstream chunk."""
        usage = chunk.get("usage")
        if usage:
            self.reported_usage = usage
        if self.system_fingerprint is None:
            self.system_fingerprint = chunk.get("system_fingerprint")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content") or choice.get("text"):
                self.content_chunks += 1
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def usage(self, body: dict[str, Any], completion_tokens: int | None = None) -> Usage:
        """Usage as the upstream reported it, else an estimate (marked so).

        ``completion_tokens`` overrides the count, for a stream cut short where the client got fewer tokens.
        """
        reported = self.reported_usage
        if reported and completion_tokens is None:
            prompt = int(reported.get("prompt_tokens") or 0)
            completion = int(reported.get("completion_tokens") or 0)
            return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        prompt = int(reported["prompt_tokens"]) if reported else estimate_prompt_tokens(body)
        completion = self.content_chunks if completion_tokens is None else completion_tokens
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=True,
        )


def usage_body(
    prompt_tokens: int, completion_tokens: int, dispatch: AttemptDispatch, estimated: bool, reported: Any = None
) -> dict[str, Any]:
    """``usage`` as the client sees it (``client_usage``) at the dispatch's prices, with the details of the
    upstream's ``reported`` usage held to the counts."""
    return client_usage(
        prompt_tokens,
        completion_tokens,
        reported,
        dispatch.input_price,
        dispatch.output_price,
        dispatch.fee_bps,
        estimated,
    )


class ChunkRewriter:
    """Turns an upstream chunk into the gateway's chunk: our id, our model name, our created time (and the
    object type of the endpoint: a text completion's chunks are ``text_completion`` objects)."""

    __slots__ = ("_created", "_dispatch", "_id", "_include_usage", "_model", "_object", "usage_sent")

    def __init__(self, dispatch: AttemptDispatch) -> None:
        self._dispatch = dispatch
        self._object = "text_completion" if dispatch.endpoint == COMPLETIONS else "chat.completion.chunk"
        self.usage_sent = False
        self._id = dispatch.request_id
        self._model = dispatch.model
        self._created = dispatch.created
        self._include_usage = dispatch.include_usage

    def rewrite(self, chunk: dict[str, Any]) -> bytes | None:
        """The chunk to send the client, or ``None`` when it carries nothing the client asked for."""
        if not self._include_usage:
            if not chunk.get("choices"):
                return None
            chunk.pop("usage", None)
        elif usage := chunk.get("usage"):
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            # Only what the gateway vouches for: the counts, the bounded details, its own cost.
            chunk["usage"] = usage_body(prompt, completion, self._dispatch, estimated=False, reported=usage)
            self.usage_sent = True
        chunk["id"] = self._id
        chunk["object"] = self._object
        chunk["created"] = self._created
        chunk["model"] = self._model
        return orjson.dumps(chunk)

    def usage_chunk(self, usage: Usage) -> bytes:
        """The final usage chunk, for a client that asked for one from an upstream that sent none."""
        return orjson.dumps(
            {
                "id": self._id,
                "object": self._object,
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage_body(usage.prompt_tokens, usage.completion_tokens, self._dispatch, usage.estimated),
            }
        )


def answer_as_chunk(doc: Any) -> dict[str, Any]:
    """An upstream's whole answer (a ``chat.completion`` or a ``text_completion``, asked for unstreamed) as the
    one chunk of a stream that said everything at once, for ``StreamTally`` and the assemblers: each choice's
    ``message`` becomes its ``delta`` (its tool calls numbered, as a stream numbers them); text choices, the
    usage and the fingerprint stay as they are. An answer not shaped so is an ``UpstreamFailure``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
        raise UpstreamFailure("invalid_answer: the upstream's answer has no list of choices")
    choices = []
    for choice in doc["choices"]:
        if not isinstance(choice, dict):
            raise UpstreamFailure("invalid_answer: a choice is not an object")
        message = choice.get("message")
        if message is None:
            choices.append(choice)
            continue
        if not isinstance(message, dict):
            raise UpstreamFailure("invalid_answer: a message is not an object")
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
                raise UpstreamFailure("invalid_answer: tool_calls is not a list of objects")
            message = {**message, "tool_calls": [{**call, "index": i} for i, call in enumerate(calls)]}
        choices.append({key: value for key, value in choice.items() if key != "message"} | {"delta": message})
    return {key: value for key, value in doc.items() if key != "choices"} | {"choices": choices}


def _new_choice() -> dict[str, Any]:
    return {"content": [], "reasoning": [], "tool_calls": {}, "logprobs": None, "finish_reason": None, "refusal": None}


def _text(value: Any) -> str:
    """A string field of an upstream chunk; anything else is a malformed chunk."""
    if not isinstance(value, str):
        raise UpstreamFailure(f"invalid_chunk: expected a string, got {type(value).__name__}")
    return value


class _Assembler:
    """What both assemblers share: the choices so far, each index at most once and within ``max_choices``,
    a byte budget for everything a hoster sends, and the body around the assembled choices."""

    def __init__(self, max_choices: int = 128, max_bytes: int = 900_000) -> None:
        self._choices: dict[int, dict[str, Any]] = {}
        self._max_choices = max_choices
        self._budget = self._max_bytes = max_bytes

    def _spend(self, size: int) -> None:
        self._budget -= size
        if self._budget < 0:
            raise UpstreamFailure(f"completion_too_large: the upstream's answer is over {self._max_bytes} bytes")

    def _state(self, choice: dict[str, Any], new: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The state of ``choice``'s index, started with ``new()`` the first time; an index that is not a small
        int within the choices asked for is an ``UpstreamFailure``."""
        index = choice.get("index") or 0
        state = self._choices.get(index) if type(index) is int else None
        if state is None:
            if not isinstance(index, int) or not 0 <= index < self._max_choices:
                raise UpstreamFailure(
                    f"too_many_choices: choice index {str(index)[:20]} outside the {self._max_choices} asked for"
                )
            state = self._choices[index] = new()
        return state

    def _finish(self, state: dict[str, Any], choice: dict[str, Any]) -> None:
        if finish := choice.get("finish_reason"):
            state["finish_reason"] = _text(finish)[:64]

    @staticmethod
    def _body(
        kind: str,
        choices: list[dict[str, Any]],
        dispatch: AttemptDispatch,
        usage: Usage,
        fingerprint: str | None,
        reported: Any,
    ) -> bytes:
        body: dict[str, Any] = {
            "id": dispatch.request_id,
            "object": kind,
            "created": dispatch.created,
            "model": dispatch.model,
            "choices": choices,
            "usage": usage_body(
                usage.prompt_tokens,
                usage.completion_tokens,
                dispatch,
                usage.estimated,
                None if usage.estimated else reported,
            ),
        }
        if fingerprint:
            body["system_fingerprint"] = fingerprint
        return orjson.dumps(body)


class CompletionAssembler(_Assembler):
    """Gathers the chunks of a stream into one ``chat.completion`` for a non-streaming client.

    Bounded, as anything a hoster sends: at most ``max_choices`` choices (the request's ``n``, itself capped),
    at most ``max_tool_calls`` tool calls per choice, and at most ``max_bytes`` of content in all (characters of
    text, reasoning, refusal and tool calls; logprobs as JSON). Past a bound, ``add`` raises ``UpstreamFailure``.
    """

    def __init__(self, max_choices: int = 128, max_bytes: int = 900_000, max_tool_calls: int = 128) -> None:
        super().__init__(max_choices, max_bytes)
        self._max_tool_calls = max_tool_calls

    def add(self, chunk: dict[str, Any]) -> None:
        """Merge one upstream chunk."""
        for choice in chunk.get("choices") or ():
            state = self._state(choice, _new_choice)
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._spend(len(_text(content)))
                state["content"].append(content)
            if reasoning := delta.get("reasoning_content"):
                self._spend(len(_text(reasoning)))
                state["reasoning"].append(reasoning)
            if refusal := delta.get("refusal"):
                self._spend(len(_text(refusal)))
                state["refusal"] = (state["refusal"] or "") + refusal
            for call in delta.get("tool_calls") or ():
                self._merge_call(state["tool_calls"], call)
            logprobs = choice.get("logprobs")
            if logprobs and logprobs.get("content"):
                self._spend(len(orjson.dumps(logprobs["content"])))
                state["logprobs"] = state["logprobs"] or {"content": [], "refusal": None}
                state["logprobs"]["content"].extend(logprobs["content"])
            self._finish(state, choice)

    def _merge_call(self, calls: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        index = call.get("index") or 0
        merged = calls.get(index) if type(index) is int else None
        if merged is None:
            if not isinstance(index, int) or not 0 <= index < self._max_tool_calls:
                raise UpstreamFailure(f"too_many_tool_calls: over {self._max_tool_calls} in one choice")
            merged = calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if call_id := call.get("id"):
            self._spend(len(_text(call_id)))
            merged["id"] = call_id
        function = call.get("function") or {}
        name, arguments = _text(function.get("name") or ""), _text(function.get("arguments") or "")
        self._spend(len(name) + len(arguments))
        merged["function"]["name"] += name
        merged["function"]["arguments"] += arguments

    def completion(
        self, dispatch: AttemptDispatch, usage: Usage, fingerprint: str | None, reported: Any = None
    ) -> bytes:
        """The assembled ``chat.completion``, with usage (and the details of the upstream's ``reported`` usage),
        serialized."""
        choices = []
        for index in sorted(self._choices) or [0]:
            state = self._choices.get(index) or _new_choice()
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(state["content"]) if state["content"] or not state["tool_calls"] else None,
                "refusal": state["refusal"],
            }
            if state["reasoning"]:
                message["reasoning_content"] = "".join(state["reasoning"])
            if state["tool_calls"]:
                message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": state["logprobs"],
                    "finish_reason": state["finish_reason"] or "stop",
                }
            )
        return self._body("chat.completion", choices, dispatch, usage, fingerprint, reported)


# The lists a text completion's ``logprobs`` carries, one entry per token.
_TEXT_LOGPROBS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def _new_text_choice() -> dict[str, Any]:
    return {"text": [], "logprobs": None, "finish_reason": None}


class TextAssembler(_Assembler):
    """Gathers the chunks of a text completion's stream into one ``text_completion``, bounded like
    ``CompletionAssembler``: at most ``max_choices`` choices and ``max_bytes`` of text and logprobs."""

    def add(self, chunk: dict[str, Any]) -> None:
        """Merge one upstream chunk."""
        for choice in chunk.get("choices") or ():
            state = self._state(choice, _new_text_choice)
            if text := choice.get("text"):
                self._spend(len(_text(text)))
                state["text"].append(text)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                self._spend(len(orjson.dumps(logprobs)))
                merged = state["logprobs"] = state["logprobs"] or {key: [] for key in _TEXT_LOGPROBS}
                for key in _TEXT_LOGPROBS:
                    part = logprobs.get(key)
                    if isinstance(part, list):
                        merged[key].extend(part)
            self._finish(state, choice)

    def completion(
        self, dispatch: AttemptDispatch, usage: Usage, fingerprint: str | None, reported: Any = None
    ) -> bytes:
        """The assembled ``text_completion``, with usage (and the details of the upstream's ``reported`` usage),
        serialized."""
        choices = []
        for index in sorted(self._choices) or [0]:
            state = self._choices.get(index) or _new_text_choice()
            choices.append(
                {
                    "index": index,
                    "text": "".join(state["text"]),
                    "logprobs": state["logprobs"],
                    "finish_reason": state["finish_reason"] or "stop",
                }
            )
        return self._body("text_completion", choices, dispatch, usage, fingerprint, reported)


def embeddings_body(doc: Any, dispatch: AttemptDispatch, tally: StreamTally) -> bytes:
    """The client's ``CreateEmbeddingResponse`` from an upstream's answer, checked: one vector per input,
    each index once, every vector of finite numbers and of one length (the ``dimensions`` asked for, if any).
    Vectors are always asked for as floats and encoded as base64 (float32, little-endian, as OpenAI) here
    when the client wanted that, so they are checked whatever the upstream supports. The usage reported (a
    non-negative integer) is noted in ``tally``; the router holds it to the request's bounds."""
    body = dispatch.body
    expected = input_count(body.get("input"))
    try:
        vectors = embedding_vectors(
            doc.get("data") if isinstance(doc, dict) else None, expected, body.get("dimensions")
        )
    except ValueError as exc:
        raise UpstreamFailure(f"invalid_embeddings: {exc}") from exc
    as_base64 = body.get("encoding_format") == "base64"
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    prompt = usage.get("prompt_tokens")
    if type(prompt) is int and prompt >= 0:
        tally.reported_usage = {"prompt_tokens": prompt, "completion_tokens": 0}
    counted = tally.usage(body)
    usage_out = usage_body(counted.prompt_tokens, 0, dispatch, counted.estimated)
    del usage_out["completion_tokens"]  # nothing is generated, and OpenAI writes no such count
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64_floats(vector) if as_base64 else vector,
                }
                for i, vector in enumerate(vectors)
            ],
            "model": dispatch.model,
            "usage": usage_out,
        }
    )


def _base64_floats(vector: list[float]) -> str:
    try:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    except (OverflowError, struct.error) as exc:
        raise UpstreamFailure("invalid_embeddings: a number does not fit a float32") from exc


# How an attempt ends -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How an attempt ended, as the adapter saw it: ``sent`` frames reached the reply subject."""

    outcome: AttemptOutcome = "failed"
    error: str | None = None
    upstream_status: int | None = None
    client_error: bool = False
    sent: int = 0


def attempt_report(
    dispatch: AttemptDispatch,
    hoster_id: str,
    adapter_id: str,
    end: AttemptEnd,
    tally: StreamTally,
    ttft_s: float | None,
    duration_ms: float,
    dropped: list[str],
) -> AttemptFinished:
    """The attempt's outcome for the router and billing. A stream cut short is billed for the content chunks
    that reached the client, not for what the upstream might report; a failed non-stream attempt for no
    completion (the client got nothing); a success as the upstream reported (the router holds it to the
    request's bounds)."""
    billed = None if end.outcome == "succeeded" or not dispatch.stream else tally.content_chunks
    if end.outcome == "failed" and not dispatch.stream:
        billed = 0
    return AttemptFinished(
        request_id=dispatch.request_id,
        attempt=dispatch.attempt,
        router_id=dispatch.router_id,
        hoster_id=hoster_id,
        adapter_id=adapter_id,
        model=dispatch.model,
        stream=dispatch.stream,
        outcome=end.outcome,
        usage=tally.usage(dispatch.body, billed),
        chunks_sent=end.sent,
        input_price=dispatch.input_price,
        output_price=dispatch.output_price,
        finish_reason=tally.finish_reason,
        error=end.error,
        upstream_status=end.upstream_status,
        client_error=end.client_error,
        ttft_ms=ttft_s * 1000 if ttft_s is not None else None,
        duration_ms=duration_ms,
        finished_at=time.time(),
        dropped_parameters=dropped,
    )


def deadline_error(
    first_chunk_seen: bool, too_long: bool, first_byte_s: float, longest_s: float, stall_s: float
) -> str:
    """The routing record's error for an attempt its deadline ended: too long in all, no first chunk in time,
    or a stall after it."""
    if too_long:
        return f"attempt_too_long: the attempt lasted over {longest_s:g} s"
    if not first_chunk_seen:
        return f"first_byte_timeout: no chunk from the upstream within {first_byte_s:g} s"
    return f"stalled: no chunk from the upstream for {stall_s:g} s"
