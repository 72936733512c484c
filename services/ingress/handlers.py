"""The public routes: thin translations between HTTP and the gateway."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from libs.contracts import errors, frames, subjects
from libs.contracts.billing import MANAGEMENT, Caller, GenerationRecord, KeyInfo
from libs.contracts.common import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint, ErrorReport, endpoint_path
from libs.contracts.management import AccountGenerationQuery, AccountGenerationReply
from libs.contracts.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_body,
    hoster_body,
    validation_failure,
)
from libs.contracts.pricing import UsageBounds, generated_choices, input_count, to_credits
from libs.contracts.routing import RouteAccepted, RouteRequest
from libs.contracts.stored_responses import (
    ChainQuery,
    InputItemsPage,
    InputItemsQuery,
    ResponseChain,
    ResponseQuery,
    Stored,
    StoredResponse,
    StoreResponse,
)
from libs.platform import apikeys
from libs.platform.ids import new_request_id
from libs.platform.metrics import TIME_TO_FIRST_TOKEN
from libs.platform.telemetry import REQUEST_ID, span_attributes
from libs.tokens import count_completion
from services.ingress.gateway import Gateway, GatewayError, ReplyStream, UsageGuard, VectorsAsked
from services.ingress.openapi import (
    CHAT_RESPONSES,
    EMBEDDING_RESPONSES,
    RESPONSE_RESPONSES,
    STORED_RESPONSE_RESPONSES,
    TEXT_COMPLETION_RESPONSES,
    Credits,
    KeyDocument,
    ModelEntry,
    ModelList,
    UsageList,
)
from services.ingress.openapi import errors as documented
from services.ingress.response_object import hoster_json, response_of
from services.ingress.response_stream import ResponseStream, sse
from services.ingress.responses import ChatTranslation, InvalidRequest, chat_request_of
from services.ingress.service import (
    CHAT_EVENTS,
    StreamOutcome,
    StreamWriter,
    error_report,
    error_response_body,
    first_answer,
    idle_report,
    key_page,
    models_page,
    sse_events,
)
from services.ingress.settings import IngressSettings

router = APIRouter()
TRACER = trace.get_tracer("computeshare.ingress")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


# Dependencies are coroutines: FastAPI runs a plain function dependency in its thread pool, a thread hop per
# request for a dictionary lookup.
async def gateway_of(request: Request) -> Gateway:
    """The app's gateway (owned by the lifespan)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def settings_of(request: Request) -> IngressSettings:
    """The app's settings."""
    settings: IngressSettings = request.app.state.settings
    return settings


GatewayDep = Annotated[Gateway, Depends(gateway_of)]
SettingsDep = Annotated[IngressSettings, Depends(settings_of)]


def _unauthorized(message: str, code: str | None = "invalid_api_key") -> GatewayError:
    return GatewayError(errors.unauthorized(message, code))


async def _verified(request: Request, gateway: Gateway, settings: IngressSettings) -> KeyInfo:
    """The valid key behind ``Authorization: Bearer ng..._...``, either kind; a 401 otherwise (a 503 while
    billing is away)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer ngk_...'.", code=None)
    key = key.strip()
    if not apikeys.well_formed(key):
        raise _unauthorized(f"Incorrect API key provided: {apikeys.display_prefix(key)}. Keys start with 'ngk_'.")
    address = request.client.host if request.client is not None else ""
    info = await gateway.verify_key(apikeys.hash_key(key), settings.retry_after_s, address)
    if info.status == "revoked":
        raise _unauthorized(f"The API key {apikeys.display_prefix(key)} has been revoked.")
    if info.status != "valid" or info.account_id is None or info.key_id is None:
        raise _unauthorized(f"Incorrect API key provided: {apikeys.display_prefix(key)}.")
    return info


async def authenticate(request: Request, gateway: GatewayDep, settings: SettingsDep) -> Caller:
    """The caller behind an inference key; a management key never calls models (403)."""
    info = await _verified(request, gateway, settings)
    if info.kind == MANAGEMENT:
        raise GatewayError(errors.management_key_not_allowed())
    assert info.account_id is not None
    assert info.key_id is not None
    return Caller(account_id=info.account_id, key_id=info.key_id, rpm=info.rpm, tpm=info.tpm)


async def authenticate_any(request: Request, gateway: GatewayDep, settings: SettingsDep) -> KeyInfo:
    """The valid key behind the request, inference or management (for what either may read)."""
    return await _verified(request, gateway, settings)


async def authenticate_manager(request: Request, gateway: GatewayDep, settings: SettingsDep) -> KeyInfo:
    """The management key behind the request; an inference key never manages (403)."""
    info = await _verified(request, gateway, settings)
    if info.kind != MANAGEMENT:
        raise GatewayError(errors.not_a_management_key())
    return info


CallerDep = Annotated[Caller, Depends(authenticate)]
AnyKeyDep = Annotated[KeyInfo, Depends(authenticate_any)]
ManagerDep = Annotated[KeyInfo, Depends(authenticate_manager)]


def error_response(report: ErrorReport, headers: dict[str, str] | None = None) -> Response:
    """An OpenAI error envelope with its status (and ``Retry-After`` when the report has one)."""
    all_headers = dict(headers or {})
    if report.retry_after is not None:
        all_headers["retry-after"] = str(report.retry_after)
    return Response(
        error_response_body(report),
        status_code=report.http_status,
        media_type="application/json",
        headers=all_headers,
    )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> Response:
    """A 400 in the OpenAI envelope."""
    return Response(
        error_body(message, "invalid_request_error", code, param),
        status_code=400,
        media_type="application/json",
    )


# The deepest nesting of arrays and objects a request body may have. Real requests stay far below it (a
# message list, content parts, a tool's JSON Schema); every service parses and re-encodes the body, and
# orjson's encoder stops at 255 levels.
MAX_JSON_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays and objects more than ``limit`` levels deep."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, (dict, list))
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it grows past ``limit`` bytes (declared or streamed)."""
    too_large = GatewayError(errors.request_too_large(limit))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> bytes:
    """The raw body of a request sent as JSON: a 415 when it is not, a 413 past ``limit`` bytes. Routes read
    their bodies with it after their key check, never through a body parameter (FastAPI would read those
    first)."""
    if not _is_json(request.headers.get("content-type")):
        raise GatewayError(errors.unsupported_media_type())
    return await _read_limited(request, limit)


def body_limit(gateway: Gateway, settings: IngressSettings) -> int:
    """The largest body, in bytes, the ingress routes: its setting, and what fits one NATS message."""
    return min(settings.max_body_bytes, gateway.max_body_bytes or settings.max_body_bytes)


async def _parsed(request: Request, gateway: Gateway, settings: IngressSettings) -> dict[str, Any] | Response:
    """The JSON object of a request's body, or the OpenAI-style error that refuses it."""
    raw = await read_json_body(request, body_limit(gateway, settings))
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return invalid_request(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload."
        )
    if not isinstance(payload, dict):
        return invalid_request("The request body must be a JSON object.")
    if too_deep(payload):
        return invalid_request(
            f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.", code="json_too_deep"
        )
    return payload


# Request ids as OpenAI's look for each endpoint (an embedding list has no id: ours is in x-request-id).
ID_PREFIXES: dict[Endpoint, str] = {CHAT: "chatcmpl-", COMPLETIONS: "cmpl-", EMBEDDINGS: "emb-"}


async def _serve(
    request: Request,
    caller: Caller,
    gateway: Gateway,
    settings: IngressSettings,
    model: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    endpoint: Endpoint,
) -> Response:
    """Validate the body with ``model`` and route it to a hoster serving ``endpoint``."""
    payload = await _parsed(request, gateway, settings)
    if isinstance(payload, Response):
        return payload
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        message, param, code = validation_failure(payload, exc.errors(include_url=False))
        return invalid_request(message, param, code)
    stream = bool(getattr(body, "stream", False))
    request_id = new_request_id(ID_PREFIXES[endpoint])
    REQUEST_ID.set(request_id)
    with TRACER.start_as_current_span(
        f"POST {request.url.path}",
        kind=SpanKind.SERVER,
        attributes=span_attributes(request_id=request_id, model=body.model, stream=stream),
    ):
        return await _complete(request_id, payload, body, stream, endpoint, caller, gateway, settings)


@router.post("/v1/chat/completions", response_model=None, responses=CHAT_RESPONSES)
async def create_chat_completion(
    request: Request, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep
) -> Response:
    """Create a chat completion (OpenAI-compatible), streaming as SSE when ``stream`` is true."""
    return await _serve(request, caller, gateway, settings, ChatCompletionRequest, CHAT)


@router.post("/v1/completions", response_model=None, responses=TEXT_COMPLETION_RESPONSES)
async def create_completion(
    request: Request, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep
) -> Response:
    """Create a text completion (OpenAI's legacy completions API), streaming as SSE when ``stream`` is true."""
    return await _serve(request, caller, gateway, settings, CompletionRequest, COMPLETIONS)


@router.post("/v1/embeddings", response_model=None, responses=EMBEDDING_RESPONSES)
async def create_embedding(request: Request, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Create embeddings of one or more inputs (OpenAI-compatible); billed per input token."""
    return await _serve(request, caller, gateway, settings, EmbeddingRequest, EMBEDDINGS)


# The inference endpoints, the hot routes: ``middleware.HotRoutes`` calls them without FastAPI's routing and
# dependency solving. Each takes exactly the request, ``authenticate``'s caller, the gateway and the settings.
HOT_ENDPOINTS = (create_chat_completion, create_completion, create_embedding)


async def _complete(
    request_id: str,
    payload: dict[str, Any],
    body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    stream: bool,
    endpoint: Endpoint,
    caller: Caller,
    gateway: Gateway,
    settings: IngressSettings,
    answer: ResponsesAnswer | None = None,
) -> Response:
    """Route the validated request and answer with the first frame: SSE for streams, one body otherwise."""
    started = time.perf_counter()
    options = getattr(body, "stream_options", None)
    route = RouteRequest(
        request_id=request_id,
        reply_subject=subjects.reply_subject(gateway.ingress_id, request_id),
        model=body.routed_model,
        stream=stream,
        include_usage=bool(stream and options is not None and options.include_usage),
        created=int(time.time()),
        routing=body.routing(),
        body=hoster_body(payload),
        caller=caller,
        endpoint=endpoint,
        api=None if answer is None else RESPONSES,
    )
    replies = gateway.open_stream(request_id)
    handed_to_stream = False
    accepted: RouteAccepted | None = None
    try:
        accepted = await gateway.route(route, settings.retry_after_s)
        replies.arm(accepted.attempt, accepted.first_byte_deadline_ms, accepted.reply_subject)
        if accepted.prompt_bound is not None and accepted.completion_bound is not None:
            bounds = UsageBounds(accepted.prompt_bound, accepted.completion_bound)
            vectors = None
            if isinstance(body, EmbeddingRequest):
                vectors = VectorsAsked(input_count(payload.get("input")), body.dimensions, body.encoding_format)
            replies.guard = UsageGuard(
                bounds,
                accepted.input_price,
                accepted.output_price,
                accepted.fee_bps,
                vectors,
                text=endpoint == COMPLETIONS,
                max_choices=generated_choices(payload, endpoint),
            )
            if accepted.prompt_tokens is not None:
                tokenizer = await gateway.tokenizer(accepted.model)
                if tokenizer is not None:
                    replies.guard.count(functools.partial(count_completion, tokenizer), accepted.prompt_tokens)
        headers = {"x-request-id": request_id, "x-computeshare-hoster": accepted.hoster_id, **accepted.headers}
        try:
            first = await first_answer(replies, headers)
        except TimeoutError:
            gateway.cancel(request_id)
            return error_response(idle_report(settings.retry_after_s), headers)
        if first.kind == frames.ERROR:
            return error_response(error_report(first.body), headers)
        if stream:
            TIME_TO_FIRST_TOKEN.labels("ingress").observe(time.perf_counter() - started)
            handed_to_stream = True
            writer = CHAT_EVENTS if answer is None else ResponsesEvents(answer, gateway, settings.retry_after_s)
            return StreamingResponse(
                _stream(gateway, replies, first, settings.retry_after_s, accepted.router_id, writer),
                media_type="text/event-stream",
                headers=headers | SSE_HEADERS,
            )
        if answer is not None:
            response = response_of(hoster_json(first.body), answer.request, answer.response_id, answer.created_at,
                                   int(time.time()))  # fmt: skip
            await answer.keep(gateway, response, settings.retry_after_s)
            return Response(orjson.dumps(response), media_type="application/json", headers=headers)
        return Response(first.body, media_type="application/json", headers=headers)
    except GatewayError as exc:
        return error_response(exc.report, {"x-request-id": request_id, **exc.headers})
    finally:
        if not handed_to_stream:
            gateway.close_stream(request_id)
            if accepted is not None:
                # Whatever ended it: the router bills on what reached the client, and nothing without this.
                gateway.delivered(accepted.router_id, replies)


async def _stream(
    gateway: Gateway,
    replies: ReplyStream,
    first: frames.Frame,
    retry_after: int,
    router_id: str,
    writer: StreamWriter = CHAT_EVENTS,
) -> AsyncIterator[bytes]:
    outcome = StreamOutcome()
    noted = False
    try:
        async for part in sse_events(first, replies, outcome, retry_after, writer):
            if outcome.completed and not noted:
                # The last frame is in: what was relayed is final; told now, not once a slow client read it.
                gateway.delivered(router_id, replies)
                noted = True
            yield part
    finally:
        gateway.close_stream(replies.request_id)
        if not noted:
            gateway.delivered(router_id, replies)
        if not outcome.completed:
            # The client went away mid-stream: stop the hoster; what it generated so far is billed.
            gateway.cancel(replies.request_id)


class ResponsesAnswer:
    """A ``POST /v1/responses`` request served as a chat completion: what its answer is translated with, and
    what is stored of it (``store``) for the caller's account."""

    __slots__ = ("account_id", "created_at", "input_items", "request", "response_id", "store")

    def __init__(self, translation: ChatTranslation, response_id: str, account_id: str, store: bool) -> None:
        # The Response echoes ``store`` as done: a privacy_mode request the client did not ask to store says so.
        self.request = translation.request.model_copy(update={"store": store})
        self.input_items = translation.input_items
        self.response_id = response_id
        self.account_id = account_id
        self.created_at = int(time.time())
        self.store = store

    async def keep(self, gateway: Gateway, response: dict[str, Any], retry_after: int) -> None:
        """Store ``response`` with the request's input items, when the request is stored. One too large for a
        message to billing is not stored and says so (``store`` false): the client was served and is billed,
        so it is answered all the same."""
        if not self.store:
            return
        limit = gateway.max_body_bytes
        if limit is not None and len(orjson.dumps(self.input_items)) + len(orjson.dumps(response)) > limit:
            response["store"] = False
            return
        event = StoreResponse(
            response_id=self.response_id, account_id=self.account_id, created_at=self.created_at,
            previous_response_id=self.request.previous_response_id, input_items=self.input_items, response=response,
        )  # fmt: skip
        try:
            await gateway.billing(subjects.STORE_RESPONSE, event, Stored, "store the response", retry_after)
        except GatewayError:
            # Billing did not answer: the client was served and is billed, and an error would have it retry
            # (and pay) again: answered all the same, not stored, and saying so.
            gateway.log.warning("response not stored", extra={"response_id": self.response_id})
            response["store"] = False


class ResponsesEvents:
    """How a Responses API stream is written (``sse_events``' writer): each chat chunk translated to the
    typed events (``ResponseStream``), the response stored before its last event, a failure as
    ``response.failed`` or ``error``."""

    __slots__ = ("answer", "gateway", "retry_after", "translator")

    def __init__(self, answer: ResponsesAnswer, gateway: Gateway, retry_after: int) -> None:
        self.answer, self.gateway, self.retry_after = answer, gateway, retry_after
        self.translator = ResponseStream(answer.request, answer.response_id, answer.created_at)

    def start(self) -> bytes:
        return sse(self.translator.start())

    def chunks(self, body: bytes) -> bytes:
        events: list[dict[str, Any]] = []
        for chunk in frames.chunks(body):
            events += self.translator.chunk(hoster_json(chunk))
        return sse(events) if events else b""

    async def end(self) -> bytes:
        closing = self.translator.finish(int(time.time()))
        # The final event's Response is the one stored (and says so when it cannot be).
        final = closing[-1]["response"] if closing else self.translator.response
        await self.answer.keep(self.gateway, final, self.retry_after)
        return sse(closing)

    def fail(self, report: ErrorReport) -> bytes:
        return sse(self.translator.fail(report))


@router.post("/v1/responses", response_model=None, responses=RESPONSE_RESPONSES)
async def create_response(request: Request, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Create a model response (OpenAI's Responses API), served as a chat completion by the network's hosters;
    stored for the account unless ``store`` is false, continued with ``previous_response_id``."""
    payload = await _parsed(request, gateway, settings)
    if isinstance(payload, Response):
        return payload
    assert caller.account_id is not None
    limit = body_limit(gateway, settings)
    previous_items = None
    previous = payload.get("previous_response_id")
    if isinstance(previous, str) and previous:
        owned = _response_query(previous, caller, "previous_response_id")
        query = ChainQuery(response_id=owned.response_id, account_id=owned.account_id, max_bytes=limit)
        chain = await gateway.billing(
            subjects.RESPONSE_CHAIN, query, ResponseChain, "continue the response", settings.retry_after_s
        )
        if not chain.found:
            return error_response(errors.response_not_found(previous, "previous_response_id"))
        if chain.too_long:
            return _too_long(previous)
        previous_items = chain.items
    try:
        translation = chat_request_of(payload, previous_items)
    except InvalidRequest as exc:
        return invalid_request(*exc.failure)
    if len(orjson.dumps(translation.chat_body)) > limit:
        # The replayed conversation is held to no body limit: with this input it may not fit one message.
        return _too_long(previous) if previous_items is not None else invalid_request(
            f"The input is too large to send to a hoster (over {limit} bytes as a chat completion).", "input",
            "request_too_large")  # fmt: skip
    # A privacy_mode request (ours, or OpenRouter's data_collection "deny": the routing's, either dialect) is
    # stored only when the client asked for it in so many words.
    store = payload.get("store") is True or (
        translation.request.store is not False and not translation.chat.routing().privacy_mode
    )
    response_id = new_request_id("resp_")
    REQUEST_ID.set(response_id)
    answer = ResponsesAnswer(translation, response_id, caller.account_id, store)
    stream = bool(translation.chat.stream)
    with TRACER.start_as_current_span(
        f"POST {request.url.path}",
        kind=SpanKind.SERVER,
        attributes=span_attributes(request_id=response_id, model=translation.chat.model, stream=stream),
    ):
        return await _complete(response_id, translation.chat_body, translation.chat, stream, CHAT, caller, gateway,
                               settings, answer)  # fmt: skip


def _too_long(previous: Any) -> Response:
    return invalid_request(f"The conversation of {previous} is too long to continue.",
                           "previous_response_id", "conversation_too_long")  # fmt: skip


def _response_query(response_id: str, caller: Caller, param: str = "response_id") -> ResponseQuery:
    """The caller's account's query for ``response_id``: a 404 for an id no response can have (the contract's
    ``ResponseId``), as for one that is not the account's."""
    try:
        return ResponseQuery(response_id=response_id, account_id=caller.account_id or "")
    except ValidationError:
        raise GatewayError(errors.response_not_found(response_id, param)) from None


async def _stored(response_id: str, caller: Caller, gateway: Gateway, settings: IngressSettings) -> dict[str, Any]:
    query = _response_query(response_id, caller)
    shown = await gateway.billing(
        subjects.SHOW_RESPONSE, query, StoredResponse, "show responses", settings.retry_after_s
    )
    if not shown.found or shown.response is None:
        raise GatewayError(errors.response_not_found(response_id, "response_id"))
    return shown.response


@router.get("/v1/responses/{response_id}", response_model=None, responses=STORED_RESPONSE_RESPONSES)
async def show_response(response_id: str, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """A stored response of this key's account."""
    return Response(orjson.dumps(await _stored(response_id, caller, gateway, settings)), media_type="application/json")


@router.delete("/v1/responses/{response_id}", response_model=None, responses=STORED_RESPONSE_RESPONSES)
async def delete_response(response_id: str, caller: CallerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Delete a stored response of this key's account."""
    query = _response_query(response_id, caller)
    done = await gateway.billing(subjects.DELETE_RESPONSE, query, Stored, "delete responses", settings.retry_after_s)
    if not done.ok:
        raise GatewayError(errors.response_not_found(response_id, "response_id"))
    body = {"id": response_id, "object": "response.deleted", "deleted": True}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/responses/{response_id}/input_items", response_model=None, responses=STORED_RESPONSE_RESPONSES)
async def list_input_items(
    response_id: str,
    caller: CallerDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Response:
    """The input items of a stored response, paged as OpenAI pages them (newest first by default)."""
    owned = _response_query(response_id, caller)
    query = InputItemsQuery(response_id=owned.response_id, account_id=owned.account_id, limit=limit,
                            order="asc" if order == "asc" else "desc", after=after, before=before)  # fmt: skip
    page = await gateway.billing(
        subjects.LIST_RESPONSE_INPUT_ITEMS, query, InputItemsPage, "list input items", settings.retry_after_s
    )
    if not page.found:
        raise GatewayError(errors.response_not_found(response_id, "response_id"))
    body = {
        "object": "list",
        "data": page.data,
        "first_id": page.data[0].get("id") if page.data else None,
        "last_id": page.data[-1].get("id") if page.data else None,
        "has_more": page.has_more,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _model_entry(model: Any) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.first_seen,
        "owned_by": "computeshare",
        "hosters": model.hosters,
        "context_length": model.context_length,
        "endpoints": [endpoint_path(endpoint) for endpoint in model.endpoints],
        # Registered with its tokenizer: usage is counted by the network, not taken from the hoster.
        "usage_verified": model.usage_verified,
        # Spot checks: its live hosters verified to serve it (README, "Verification"), and whether the operator
        # designated a reference for it (then trusted_only routes to verified hosters only).
        "verified_hosters": model.verified_hosters,
        "has_reference": model.has_reference,
        "pricing": {
            "unit": "credits per million tokens",
            "input": {"min": model.min_input_price / 1e6, "max": model.max_input_price / 1e6},
            "output": {"min": model.min_output_price / 1e6, "max": model.max_output_price / 1e6},
        },
    }


@router.get("/v1/credits", response_model=None, responses={200: {"model": Credits}, **documented(401, 503)})
async def show_credits(caller: AnyKeyDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """The key's account: balance, credits held by open requests, today's spend and the daily cap (credits)."""
    assert caller.account_id is not None
    report = await gateway.credits(caller.account_id, settings.retry_after_s)
    return Response(
        orjson.dumps(
            {
                "object": "credits",
                "account_id": report.account_id,
                "balance": to_credits(report.balance),
                "reserved": to_credits(report.reserved),
                "spent_today": to_credits(report.spent_today),
                "daily_cap": None if report.daily_cap is None else to_credits(report.daily_cap),
            }
        ),
        media_type="application/json",
    )


@router.get("/v1/key", response_model=None, responses={200: {"model": KeyDocument}, **documented(401, 503)})
async def show_key(info: AnyKeyDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """The calling key in OpenRouter's shape: its label, its limits, what it spent and can still spend
    (credits); ``is_management_key`` for a management key."""
    assert info.account_id is not None
    assert info.key_id is not None
    caller = Caller(account_id=info.account_id, key_id=info.key_id, rpm=info.rpm, tpm=info.tpm)
    report = await gateway.key(caller, settings.retry_after_s)
    if report is None:
        # Billing verified the key moments ago (or the cache did): it was revoked or moved since.
        raise _unauthorized("This API key is no longer valid.")
    return Response(orjson.dumps(key_page(report, info.kind == MANAGEMENT)), media_type="application/json")


@router.get("/v1/usage", response_model=None, responses={200: {"model": UsageList}, **documented(400, 401, 503)})
async def list_usage(
    caller: AnyKeyDep, gateway: GatewayDep, settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> Response:
    """This key's most recent requests (a management key: its account's), newest first, with tokens and cost
    (credits)."""
    assert caller.account_id is not None
    # An inference key sees what it made, as with /v1/generation; the account's whole history is the manager's.
    key_id = None if caller.kind == MANAGEMENT else caller.key_id
    report = await gateway.usage(caller.account_id, key_id, limit, settings.retry_after_s)
    items = [
        {
            "id": item.request_id,
            "model": item.model,
            "status": item.status,
            "prompt_tokens": item.prompt_tokens,
            "completion_tokens": item.completion_tokens,
            "cost": to_credits(item.cost),
            "created": int(item.created_at),
        }
        for item in report.items
    ]
    return Response(orjson.dumps({"object": "list", "data": items}), media_type="application/json")


@router.get(
    "/v1/generation/{request_id}",
    response_model=None,
    responses={200: {"model": GenerationRecord}, **documented(401, 404, 503)},
)
async def show_generation(request_id: str, caller: AnyKeyDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """The routing record of one of this key's requests (a management key: of any request of its account):
    each attempt's hoster, outcome and latency, the tokens and the cost (credits)."""
    assert caller.account_id is not None
    assert caller.key_id is not None
    if caller.kind == MANAGEMENT:
        query = AccountGenerationQuery(account_id=caller.account_id, request_id=request_id)
        answer = await gateway.manage(
            subjects.SHOW_ACCOUNT_GENERATION, query, AccountGenerationReply, settings.retry_after_s
        )
        record = answer.generation
    else:
        record = await gateway.generation(request_id, caller.key_id, settings.retry_after_s)
    if record is None:
        raise GatewayError(errors.generation_not_found(request_id))
    return Response(record.model_dump_json(), media_type="application/json")


@router.get("/v1/models", response_model=None, responses={200: {"model": ModelList}, **documented(503)})
async def list_models(gateway: GatewayDep, settings: SettingsDep) -> Response:
    """The models live on the network now, with their price range and number of live hosters."""
    try:
        listing = await gateway.list_models(settings.retry_after_s)
    except GatewayError as exc:
        return error_response(exc.report)
    return Response(models_page([_model_entry(m) for m in listing.models]), media_type="application/json")


@router.get(
    "/v1/models/{model_id:path}", response_model=None, responses={200: {"model": ModelEntry}, **documented(404, 503)}
)
async def retrieve_model(model_id: str, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """One live model."""
    try:
        listing = await gateway.list_models(settings.retry_after_s)
    except GatewayError as exc:
        return error_response(exc.report)
    for model in listing.models:
        if model.id == model_id:
            return Response(orjson.dumps(_model_entry(model)), media_type="application/json")
    return error_response(errors.model_not_live(model_id))


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False, response_model=None)
async def readyz(gateway: GatewayDep) -> Response:
    """Readiness: connected to NATS and subscribed for replies."""
    if gateway.ready:
        return Response(b'{"status":"ready"}', media_type="application/json")
    return Response(b'{"status":"not ready"}', status_code=503, media_type="application/json")
