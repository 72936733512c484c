"""A streamed Responses API answer from a chat completion stream: ``ResponseStream`` turns chat chunks into the
Responses stream events, as a plain state machine beside the I/O (the handler moves bytes, ``sse`` frames them).
Per token it does little: a delta in, one small event dict out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from libs.contracts.common import ErrorReport
from libs.contracts.responses import ResponsesRequest
from libs.platform.ids import new_request_id
from services.ingress.response_object import (
    INCOMPLETE,
    call_item,
    logprobs_of,
    message_item,
    reasoning_item,
    reasoning_of,
    response_body,
    response_echo,
    status_of,
    text_part,
    usage_of,
)

# A text item's part kinds, and their events' names.
REASONING, TEXT, REFUSAL = "reasoning_text", "output_text", "refusal"
_DELTA = {
    REASONING: "response.reasoning_text.delta",
    TEXT: "response.output_text.delta",
    REFUSAL: "response.refusal.delta",
}
_DONE = {REASONING: "response.reasoning_text.done", TEXT: "response.output_text.done", REFUSAL: "response.refusal.done"}


class _OpenText:
    """The reasoning or message item receiving text, and its open content part."""

    __slots__ = ("index", "item", "kind", "logprobs", "part", "pieces")

    def __init__(self, item: dict[str, Any], index: int, kind: str) -> None:
        self.item = item
        self.index = index
        self.kind = kind
        self.part = 0
        self.pieces: list[str] = []
        self.logprobs: list[dict[str, Any]] = []


class _OpenCall:
    """A function call being streamed: announced (``item``) once its name is whole, at its first arguments."""

    __slots__ = ("call_id", "index", "item", "name", "pieces")

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name = ""
        self.pieces: list[str] = []
        self.item: dict[str, Any] | None = None
        self.index = -1


class ResponseStream:
    """One streamed response as a plain state machine: chat completion chunks (parsed) in, Responses stream
    events (dicts, each with the next ``sequence_number``) out; no I/O.

    ``start`` gives ``response.created`` and ``response.in_progress`` (the other methods start the stream if it
    was not); ``chunk`` gives each output item's events as the chunks carry them: ``output_item.added``, its
    content part's ``added``, the deltas, their ``done``, the part's ``done`` and ``output_item.done`` (for a
    function call: ``function_call_arguments.delta``/``done``). An item closes when another kind of output
    begins or the choice finishes; a turn's function calls close together, in order, when their run ends.
    ``finish`` (the chat stream ended) gives ``response.completed``, or ``response.incomplete`` when the model
    was cut by its limit or a content filter, with the whole Response and the usage of the last chunk.
    ``fail`` gives ``response.failed`` while no output reached the client, an ``error`` event after (the
    Response's status is ``failed`` either way). ``response`` is the Response object at any time (to store)."""

    def __init__(self, request: ResponsesRequest, response_id: str, created_at: int) -> None:
        self._echo = response_echo(request)
        self._logprobs = request.logprobs
        self._id = response_id
        self._created_at = created_at
        self._model = request.routed_model
        self._seq = 0
        self._started = False
        self._ended = False
        self._items: list[dict[str, Any]] = []
        self._text: _OpenText | None = None
        self._calls: dict[int, _OpenCall] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._completed_at: int | None = None
        self._status = "in_progress"

    @property
    def status(self) -> str:
        """``in_progress`` until the stream ends ``completed``, ``incomplete`` or ``failed``."""
        return self._status

    @property
    def response(self) -> dict[str, Any]:
        """The Response object as it stands: in progress, or final once the stream ended."""
        return response_body(
            self._echo,
            self._id,
            self._created_at,
            self._model,
            self._status,
            [dict(item) for item in self._items],
            finish=self._finish,
            usage=self._usage,
            error=self._error,
            completed_at=self._completed_at,
        )

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress`` (nothing if the stream started already)."""
        if self._started:
            return []
        self._started = True
        response = self.response
        return [
            {"type": "response.created", "response": response, "sequence_number": self._next()},
            {"type": "response.in_progress", "response": response, "sequence_number": self._next()},
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chat completion chunk (only the first choice's: Responses have one)."""
        if self._ended:
            return []
        out = self.start()
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage_of(usage)
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0 or self._finish is not None:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, choice.get("logprobs"), out)
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._finish = finish
                self._close_all(out, "incomplete" if finish in INCOMPLETE else "completed")
        return out

    def finish(self, completed_at: int | None = None) -> list[dict[str, Any]]:
        """The final event, once the chat stream ended (its last chunk, with the usage, is in)."""
        if self._ended:
            return []
        out = self.start()
        self._close_all(out, "completed")
        self._ended = True
        self._status = status_of(self._finish)
        self._completed_at = self._created_at if completed_at is None else completed_at
        kind = "response.completed" if self.status == "completed" else "response.incomplete"
        out.append({"type": kind, "response": self.response, "sequence_number": self._next()})
        return out

    def fail(self, report: ErrorReport) -> list[dict[str, Any]]:
        """The events of a failure: ``response.failed`` while no output item reached the client, else ``error``
        (OpenAI's event for a failure after the first byte). The Response keeps what was generated."""
        if self._ended:
            return []
        out = self.start()
        self._ended = True
        self._settle_text("incomplete")
        for state in self._calls.values():
            if state.item is not None:
                _write_call(state, state.item, "incomplete")
        self._calls.clear()
        return out + self._failure(report)

    def _failure(self, report: ErrorReport) -> list[dict[str, Any]]:
        self._status = "failed"
        self._error = {"code": _error_code(report), "message": report.message}
        if not self._items:
            return [{"type": "response.failed", "response": self.response, "sequence_number": self._next()}]
        error = {"type": "error", "code": report.code, "message": report.message, "param": report.param}
        return [error | {"sequence_number": self._next()}]

    # Deltas -------------------------------------------------------------------------------------------------

    def _delta(self, delta: dict[str, Any], logprobs: Any, out: list[dict[str, Any]]) -> None:
        reasoning = reasoning_of(delta)
        if isinstance(reasoning, str) and reasoning:
            self._piece(REASONING, reasoning, out)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._piece(TEXT, content, out, logprobs_of(logprobs) if self._logprobs else [])
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._piece(REFUSAL, refusal, out)
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                self._call_piece(position, call, out)

    def _piece(self, kind: str, text: str, out: list[dict[str, Any]], logprobs: list[Any] | None = None) -> None:
        """One piece of text: the delta event (after opening its item or part when it is not the open one)."""
        open_text = self._text
        if open_text is None or open_text.kind != kind:
            open_text = self._open_text(kind, out)
        open_text.pieces.append(text)
        event = {
            "type": _DELTA[kind],
            "item_id": open_text.item["id"],
            "output_index": open_text.index,
            "content_index": open_text.part,
            "delta": text,
            "sequence_number": self._next(),
        }
        if logprobs is not None:
            event["logprobs"] = logprobs
            open_text.logprobs += logprobs
        out.append(event)

    def _open_text(self, kind: str, out: list[dict[str, Any]]) -> _OpenText:
        self._close_calls(out, "completed")
        current = self._text
        if current is not None and current.kind != REASONING and kind != REASONING:
            # Text and refusal are parts of one message: close the part, open the other.
            self._close_part(current, out)
            current.kind = kind
            current.part += 1
            current.pieces = []
            current.logprobs = []
        else:
            if current is not None:
                self._close_text(out, "completed")
            if kind == REASONING:
                item = reasoning_item(new_request_id("rs_"), None, "in_progress")
            else:
                item = message_item(new_request_id("msg_"), [], "in_progress")
            current = self._text = _OpenText(item, len(self._items), kind)
            self._items.append(item)
            out.append(self._item_event("response.output_item.added", current.index, item))
        out.append(
            {
                "type": "response.content_part.added",
                "item_id": current.item["id"],
                "output_index": current.index,
                "content_index": current.part,
                "part": _part(kind, ""),
                "sequence_number": self._next(),
            }
        )
        return current

    def _call_piece(self, position: int, call: dict[str, Any], out: list[dict[str, Any]]) -> None:
        """A piece of a function call: its id and name come first, then its arguments in pieces."""
        if self._text is not None:
            self._close_text(out, "completed")
        index = call.get("index")
        index = index if type(index) is int else position
        state = self._calls.get(index)
        if state is None:
            state = self._calls[index] = _OpenCall()
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id and state.call_id is None:
            state.call_id = call_id
        function = call.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        if isinstance(name, str):
            state.name += name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item = state.item if state.item is not None else self._announce(state, out)
            state.pieces.append(arguments)
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": state.index,
                    "delta": arguments,
                    "sequence_number": self._next(),
                }
            )

    def _announce(self, state: _OpenCall, out: list[dict[str, Any]]) -> dict[str, Any]:
        """Add the call's item (``output_item.added``), with its name so far and no arguments yet."""
        state.call_id = state.call_id or new_request_id("call_")
        item = call_item(new_request_id("fc_"), state.call_id, state.name, "", "in_progress")
        state.item = item
        state.index = len(self._items)
        self._items.append(item)
        out.append(self._item_event("response.output_item.added", state.index, item))
        return item

    # Closing ------------------------------------------------------------------------------------------------

    def _item_event(self, kind: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
        snapshot = dict(item)
        if "content" in snapshot:
            snapshot["content"] = list(snapshot["content"])
        return {"type": kind, "output_index": index, "item": snapshot, "sequence_number": self._next()}

    def _close_all(self, out: list[dict[str, Any]], status: str) -> None:
        """Close every open item; ``status`` is the last one's (the item a cut stopped)."""
        self._close_text(out, status)
        self._close_calls(out, status)

    def _settle_text(self, status: str) -> None:
        """Write the open text's part into its item, which ends with ``status`` (no event: the stream failed)."""
        if self._text is not None:
            self._write_part(self._text)
            self._text.item["status"] = status
            self._text = None

    def _write_part(self, current: _OpenText) -> tuple[str, dict[str, Any]]:
        """The open part's whole text, and the part, written into its item."""
        text = "".join(current.pieces)
        part = _part(current.kind, text, current.logprobs)
        current.item["content"] = [part] if current.kind == REASONING else [*current.item["content"], part]
        return text, part

    def _close_part(self, current: _OpenText, out: list[dict[str, Any]]) -> None:
        text, part = self._write_part(current)
        done: dict[str, Any] = {
            "type": _DONE[current.kind],
            "item_id": current.item["id"],
            "output_index": current.index,
            "content_index": current.part,
        }
        if current.kind == REFUSAL:
            done["refusal"] = text
        else:
            done["text"] = text
        if current.kind == TEXT:
            done["logprobs"] = current.logprobs
        done["sequence_number"] = self._next()
        out.append(done)
        out.append(
            {
                "type": "response.content_part.done",
                "item_id": current.item["id"],
                "output_index": current.index,
                "content_index": current.part,
                "part": part,
                "sequence_number": self._next(),
            }
        )

    def _close_text(self, out: list[dict[str, Any]], status: str) -> None:
        current = self._text
        if current is None:
            return
        self._close_part(current, out)
        current.item["status"] = status
        self._text = None
        out.append(self._item_event("response.output_item.done", current.index, current.item))

    def _close_calls(self, out: list[dict[str, Any]], status: str) -> None:
        calls = sorted(self._calls.values(), key=lambda call: call.index if call.item is not None else len(self._items))
        self._calls.clear()
        for position, state in enumerate(calls):
            item = state.item if state.item is not None else self._announce(state, out)
            _write_call(state, item, status if position == len(calls) - 1 else "completed")
            out.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "name": state.name,
                    "output_index": state.index,
                    "arguments": item["arguments"],
                    "sequence_number": self._next(),
                }
            )
            out.append(self._item_event("response.output_item.done", state.index, item))


def _write_call(state: _OpenCall, item: dict[str, Any], status: str) -> None:
    item["arguments"] = "".join(state.pieces)
    item["name"] = state.name
    item["status"] = status


def _part(kind: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if kind == TEXT:
        return text_part(text, logprobs if logprobs is not None else [])
    if kind == REFUSAL:
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def _error_code(report: ErrorReport) -> str:
    """The Response error's code: OpenAI's list has no room for ours, which the ``error`` event carries."""
    if report.type == "rate_limit_error":
        return "rate_limit_exceeded"
    return "server_error"


def sse(events: Iterable[dict[str, Any]]) -> bytes:
    """Events as SSE, as OpenAI sends them: ``event: <type>`` and ``data: <json>``. A Responses stream has no
    ``data: [DONE]``: its final event ends it."""
    out = bytearray()
    for event in events:
        out += b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    return bytes(out)
