"""The simulator's HTTP app: plain Starlette, so that it is never the bottleneck of a gateway benchmark."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import random
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from itertools import zip_longest
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.simulator.chat_request import ChatCompletionRequest, SimulatorOverride, request_problem
from services.simulator.other_endpoints import embeddings, plan_text, text_completion, text_events
from services.simulator.responses import (
    DONE_EVENT,
    CompletionMeta,
    choice_chunks,
    completion,
    completion_chunk,
    error_envelope,
    finish_chunk,
    new_completion,
    sse_event,
    usage_chunk,
)
from services.simulator.service import Behaviour, Reply, plan_reply, resolve_behaviour
from services.simulator.settings import SimulatorSettings

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Parts of a validation error's location that name a request field or list index, not a union member's type.
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_UNION_MEMBER_TAGS = frozenset({"str", "int", "float", "bool", "none"})


class SimulatedDisconnect(Exception):
    """Raised inside a response body to make the server drop the connection, as the ``disconnect`` fault."""


def build_app(settings: SimulatorSettings) -> Starlette:
    """The simulator app for ``settings``.

    ``app.state`` holds ``requests_total``, ``active_streams`` and ``last_request_body``, the JSON body of the
    latest chat request as received.
    """
    app = Starlette(exception_handlers={HTTPException: _http_error})
    app.state.requests_total = 0
    app.state.active_streams = 0
    app.state.last_request_body = None
    app.router.routes.extend(_Endpoints(settings, app.state).routes())
    return app


class _Endpoints:
    """The routes, bound to one configuration and to the app's counters."""

    def __init__(self, settings: SimulatorSettings, state: State) -> None:
        self._state = state
        self._fault_rate = settings.fault_rate
        self._defaults = settings.behaviour()
        self._models = frozenset(settings.models)
        self._expected_authorization = None if settings.api_key is None else f"Bearer {settings.api_key}".encode()
        self._model_list = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "simulator"} for model in settings.models
                ],
            }
        )

    def routes(self) -> list[Route]:
        """The simulator's routes."""
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``: a simulated completion, streamed or whole, or a fault."""
        payload = await self._read(request)
        if isinstance(payload, Response):
            return payload
        chat = _chat_request(payload)
        if isinstance(chat, Response):
            return chat
        if chat.model not in self._models:
            return _json_error(
                404,
                f"The model `{chat.model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        behaviour = resolve_behaviour(self._defaults, self._fault_rate, chat.simulator, random.random())
        if behaviour.fault == "error":
            return _json_error(
                behaviour.fault_status,
                "The simulator failed this request, as configured.",
                "server_error",
                code="simulated_error",
            )
        if behaviour.fault == "hang" or (behaviour.fault == "stall" and not chat.stream):
            await _until_disconnected(request.receive)
            return _abandoned()
        meta = new_completion(chat.model)
        hostile = _hostile_body(behaviour, meta)
        if behaviour.fault == "huge_error" and hostile is not None:
            return StreamingResponse(hostile, status_code=behaviour.fault_status, media_type="application/json")
        if hostile is not None:
            return _CountedEventStream(hostile, self._state)
        reply = plan_reply(chat, behaviour.reply_tokens, reasoning_tokens=behaviour.reasoning_tokens)
        if behaviour.usage_factor != 1.0 or behaviour.cached_tokens:
            reply = dataclasses.replace(
                reply, usage_factor=behaviour.usage_factor, cached_tokens=behaviour.cached_tokens
            )
        if chat.stream:
            events = _completion_events(meta, reply, behaviour, include_usage=chat.include_usage)
            return _CountedEventStream(events, self._state)
        if behaviour.fault == "disconnect":
            if await _disconnected_within(request.receive, behaviour.ttft_s):
                return _abandoned()
            return StreamingResponse(_DroppedBody(), media_type="application/json")
        wait_s = behaviour.ttft_s + behaviour.generation_s(reply.steps)
        if await _disconnected_within(request.receive, wait_s):
            return _abandoned()
        return _json(200, completion(meta, reply))

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        """A request's JSON object, counted and kept for ``/stats``, or the response refusing it."""
        self._state.requests_total += 1
        if not self._authorized(request):
            return _unauthorized()
        payload = _json_object(await request.body())
        if isinstance(payload, Response):
            return payload
        self._state.last_request_body = payload
        return payload

    async def _other(self, request: Request) -> tuple[dict[str, Any], Behaviour] | Response:
        """The body and behaviour of a text completion or embedding request, or the response refusing it (or
        the fault it was told to play: an error, or a hang)."""
        payload = await self._read(request)
        if isinstance(payload, Response):
            return payload
        if payload.get("model") not in self._models:
            return _json_error(
                404,
                f"The model `{payload.get('model')}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        try:
            override = SimulatorOverride.model_validate(payload["simulator"]) if "simulator" in payload else None
        except ValidationError as exc:
            return _json_error(400, str(exc.errors(include_url=False)[0]["msg"]), "invalid_request_error")
        behaviour = resolve_behaviour(self._defaults, self._fault_rate, override, random.random())
        if behaviour.fault == "error":
            return _json_error(
                behaviour.fault_status,
                "The simulator failed this request, as configured.",
                "server_error",
                code="simulated_error",
            )
        if behaviour.fault == "hang":
            await _until_disconnected(request.receive)
            return _abandoned()
        if await _disconnected_within(request.receive, behaviour.ttft_s):
            return _abandoned()
        return payload, behaviour

    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``: a simulated text completion, streamed (at once) or whole."""
        taken = await self._other(request)
        if isinstance(taken, Response):
            return taken
        payload, behaviour = taken
        if not isinstance(payload.get("prompt"), (str, list)):
            return _json_error(400, "Missing required parameter: 'prompt'.", "invalid_request_error", param="prompt")
        try:
            prompts, replies = plan_text(payload, behaviour.reply_tokens)
        except ValidationError as exc:
            return _json_error(400, str(exc.errors(include_url=False)[0]["msg"]), "invalid_request_error")
        if behaviour.usage_factor != 1.0:
            replies = [dataclasses.replace(r, usage_factor=behaviour.usage_factor) for r in replies]
        meta = dataclasses.replace(new_completion(str(payload["model"])), id="cmpl-sim-" + uuid.uuid4().hex)
        if payload.get("stream"):
            return Response(text_events(meta, payload, prompts, replies), media_type="text/event-stream")
        return Response(text_completion(meta, payload, prompts, replies), media_type="application/json")

    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: deterministic unit vectors, one per input."""
        taken = await self._other(request)
        if isinstance(taken, Response):
            return taken
        payload, behaviour = taken
        if not isinstance(payload.get("input"), (str, list)) or not payload["input"]:
            return _json_error(400, "Missing required parameter: 'input'.", "invalid_request_error", param="input")
        return Response(embeddings(payload, behaviour.usage_factor), media_type="application/json")

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: the configured models in OpenAI's list shape."""
        if not self._authorized(request):
            return _unauthorized()
        return Response(self._model_list, media_type="application/json")

    async def health(self, request: Request) -> Response:
        """``GET /healthz``: the process is serving."""
        return _json(200, {"status": "ok"})

    async def stats(self, request: Request) -> Response:
        """``GET /stats``: request and open-stream counters, and the latest chat request's body, for tests."""
        return _json(
            200,
            {
                "requests_total": self._state.requests_total,
                "active_streams": self._state.active_streams,
                "last_request_body": self._state.last_request_body,
            },
        )

    def _authorized(self, request: Request) -> bool:
        if self._expected_authorization is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._expected_authorization)


def _json_object(body: bytes) -> dict[str, Any] | Response:
    """The body as a JSON object, or the 400 response OpenAI sends when it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _json_error(
            400,
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            "invalid_request_error",
        )
    if not isinstance(payload, dict):
        return _json_error(400, "The request body must be a JSON object.", "invalid_request_error")
    return payload


def _chat_request(payload: dict[str, Any]) -> ChatCompletionRequest | Response:
    """The validated request, or the 400 response OpenAI would send for it."""
    try:
        chat = ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(first["loc"])
        message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
        return _json_error(400, message, "invalid_request_error", param=param)
    problem = request_problem(chat)
    if problem is not None:
        return _json_error(400, problem.message, "invalid_request_error", param=problem.param)
    return chat


def _param(loc: Sequence[int | str]) -> str | None:
    """The request field a validation error is about, as ``tools.0.function.name``.

    Pydantic also names the member of a union it tried (``str``, ``FunctionTool``, ``literal[...]``); a client
    knows nothing of those, so they are left out.
    """
    parts = [
        str(part)
        for part in loc
        if isinstance(part, int) or (_FIELD_NAME.fullmatch(part) and part not in _UNION_MEMBER_TAGS)
    ]
    return ".".join(parts) or None


async def _completion_events(
    meta: CompletionMeta, reply: Reply, behaviour: Behaviour, *, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The stream's events, paced by ``behaviour``; with the ``disconnect`` fault it breaks off early.

    Step 0 opens every choice; step ``k`` then carries token ``k - 1`` of each choice, one chunk per choice,
    so ``n`` choices advance together. Events due at the same moment leave in one write: a write per event
    costs the server a syscall each, which at 0 ms between tokens would make the simulator the bottleneck of a
    gateway benchmark.
    """
    loop = asyncio.get_running_loop()
    if behaviour.ttft_s > 0:
        await asyncio.sleep(behaviour.ttft_s)
    due: list[bytes] = []
    interval = behaviour.token_interval_s
    drop_at = behaviour.fault_after_tokens + 1 if behaviour.fault in ("disconnect", "stall") else None
    first_token_at = loop.time()
    steps = zip_longest(*(choice_chunks(meta, choice, include_usage=include_usage) for choice in reply.choices))
    for step, chunks in enumerate(steps):
        if step == drop_at:
            break
        if interval and step > 1:
            # Pace against a schedule, not a fixed sleep, so many concurrent streams keep the configured rate.
            delay = first_token_at + (step - 1) * interval - loop.time()
            if delay > 0:
                yield b"".join(due)
                due.clear()
                await asyncio.sleep(delay)
        due.extend(sse_event(chunk) for chunk in chunks if chunk is not None)
    if drop_at is not None:
        yield b"".join(due)
        if behaviour.fault == "stall":
            await asyncio.Future()  # silent, the connection open, until the client leaves
        raise SimulatedDisconnect
    due.extend(sse_event(finish_chunk(meta, choice, include_usage=include_usage)) for choice in reply.choices)
    if include_usage:
        due.append(sse_event(usage_chunk(meta, reply)))
    due.append(DONE_EVENT)
    if behaviour.fault == "after_done":
        # A hostile upstream: content after [DONE] (in the same write and in a later one, with [DONE] again),
        # then silence with the connection open.
        yield b"".join(due) + sse_event(completion_chunk(meta, {"content": AFTER_DONE}))
        yield sse_event(completion_chunk(meta, {"content": AFTER_DONE})) + DONE_EVENT
        await asyncio.Future()
    yield b"".join(due)


# What the ``after_done`` fault sends after [DONE].
AFTER_DONE = " and more after [DONE]"
HOSTILE_PIECE_BYTES = 64 * 1024


def _hostile_body(behaviour: Behaviour, meta: CompletionMeta) -> AsyncGenerator[bytes, None] | None:
    """The body of a hostile fault (``endless_line``, ``huge_error``, ``many_choices``), else None."""
    if behaviour.fault == "endless_line":
        return _endless(b'data: {"id": "' + meta.id.encode() + b'", "junk": "', behaviour.fault_bytes)
    if behaviour.fault == "huge_error":
        return _endless(b'{"error": {"type": "server_error", "message": "', behaviour.fault_bytes)
    if behaviour.fault == "many_choices":
        return _many_choices(meta, behaviour.fault_choices)
    return None


async def _endless(opening: bytes, size: int) -> AsyncGenerator[bytes, None]:
    """``opening`` then ``x`` without a newline or a closing quote, ``size`` bytes in all (0: for ever)."""
    yield opening
    sent, piece = len(opening), b"x" * HOSTILE_PIECE_BYTES
    while not size or sent < size:
        part = piece if not size else piece[: size - sent]
        yield part
        sent += len(part)
        await asyncio.sleep(0)  # let the server notice a client that left


async def _many_choices(meta: CompletionMeta, choices: int) -> AsyncGenerator[bytes, None]:
    """A well-formed stream with ``choices`` choices, whatever ``n`` the request asked for."""
    for start in range(0, choices, 100):
        yield b"".join(
            sse_event(completion_chunk(meta, {"role": "assistant", "content": "many"}, "stop", index=index))
            for index in range(start, min(start + 100, choices))
        )
    yield DONE_EVENT


class _CountedEventStream(StreamingResponse):
    """An SSE response counted in ``active_streams`` while it is sent, until it ends or the client leaves.

    Starlette cancels the sending when the client disconnects; closing the generator then also ends a
    stream that was suspended between two chunks.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], state: State) -> None:
        super().__init__(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._events = events
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._state.active_streams += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.active_streams -= 1
            await self._events.aclose()


class _DroppedBody:
    """A response body that fails before its first byte: the server then closes the connection."""

    def __aiter__(self) -> _DroppedBody:
        return self

    async def __anext__(self) -> bytes:
        raise SimulatedDisconnect


async def _until_disconnected(receive: Receive) -> None:
    """Wait, without polling, until the client goes away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True if the client left meanwhile, so nobody waits for the reply any more."""
    if seconds <= 0:
        return False
    try:
        async with asyncio.timeout(seconds):
            await _until_disconnected(receive)
    except TimeoutError:
        return False
    return True


def _abandoned() -> Response:
    """The response for a client that has already gone: nginx's "client closed request", sent to nobody."""
    return Response(status_code=499)


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _json_error(
    status: int, message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> Response:
    return _json(status, error_envelope(message, type_, param=param, code=code))


def _unauthorized() -> Response:
    return _json_error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    assert isinstance(exc, HTTPException)
    response = _json_error(exc.status_code, exc.detail, "invalid_request_error")
    response.headers.update(exc.headers or {})
    return response
