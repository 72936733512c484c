"""The inference routes are served without FastAPI's routing and dependency solving (``middleware.HotRoutes``),
and answer exactly as FastAPI answered them: the same statuses, headers and bodies, the same metrics label,
the same OpenAPI document. The bus is answered in process: a key check, a route decision, a reply frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import fastapi.dependencies.utils
import fastapi.routing
import httpx
import orjson
import pytest
from fastapi import FastAPI
from nats.errors import NoRespondersError
from starlette.types import Message

from libs.contracts import errors, frames, subjects
from libs.contracts.billing import INFERENCE, MANAGEMENT, KeyInfo
from libs.contracts.routing import RouteRejected
from libs.platform import apikeys
from libs.platform.metrics import HTTP_REQUESTS
from services.ingress.app import api_routes, build_app
from services.ingress.gateway import Gateway
from services.ingress.handlers import HOT_ENDPOINTS, authenticate, gateway_of, settings_of
from services.ingress.middleware import HotRoutes
from services.ingress.settings import IngressSettings
from tests.unit.ingress.inprocess_bus import InProcessBus, Msg

LIMIT = 64 * 1024
INFERENCE_KEY = "ngk_" + "a" * 40
MANAGEMENT_KEY = "ngk_" + "b" * 40
REVOKED_KEY = "ngk_" + "c" * 40
ANSWER = b'{"id":"x","object":"chat.completion","choices":[]}'
HOT = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/embeddings": {"model": "m", "input": "hi"},
}


class Bus(InProcessBus):
    """Billing and a router, in process: keys by their hash (no answer when ``billing_away``), then an accepted
    route answered with ``ANSWER`` (or the rejection in ``reject``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reject: RouteRejected | None = None
        self.billing_away = False

    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
        return None

    async def request(self, subject: str, data: bytes, **_: Any) -> Msg:
        if subject == subjects.VERIFY_KEY:
            if self.billing_away:
                raise NoRespondersError
            return Msg(subject, self.key_info(orjson.loads(data)["key_hash"]).model_dump_json().encode())
        assert subject == subjects.ROUTE_REQUEST
        if self.reject is not None:
            return Msg(subject, self.reject.model_dump_json().encode())
        return self.accept(subject, orjson.loads(data),
                           lambda offer: [Msg(offer, frames.encode(frames.COMPLETION, 1, 0, ANSWER))])  # fmt: skip

    @staticmethod
    def key_info(key_hash: str) -> KeyInfo:
        if key_hash == apikeys.hash_key(REVOKED_KEY):
            return KeyInfo(status="revoked")
        kinds = {apikeys.hash_key(INFERENCE_KEY): INFERENCE, apikeys.hash_key(MANAGEMENT_KEY): MANAGEMENT}
        if key_hash not in kinds:
            return KeyInfo(status="unknown")
        return KeyInfo(status="valid", key_id="k1", account_id="a1", kind=kinds[key_hash])


async def ingress(bus: Bus, fast: bool) -> FastAPI:
    """The app on ``bus``; without its fast path unless ``fast`` (FastAPI serving every route, as before)."""
    app = build_app(IngressSettings(max_body_bytes=LIMIT, metrics_port=0, instance_id="ing"))
    if not fast:
        app.user_middleware = [m for m in app.user_middleware if cast(object, m.cls) is not HotRoutes]
    gateway: Gateway = app.state.gateway
    await gateway.open(bus)  # type: ignore[arg-type]
    return app


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call FastAPI makes to solve a route's dependencies."""
    calls: list[object] = []
    original = fastapi.dependencies.utils.solve_dependencies

    async def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("request"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", recording)
    return calls


async def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        return await client.request(method, path, **kwargs)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def streamed(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 16384 + 1):
        yield b" " * 16384


# Each case: a request to a hot route, and whether the bus rejects its route.
CASES: dict[str, dict[str, Any]] = {
    "answered": {"json": HOT["/v1/chat/completions"], "headers": bearer(INFERENCE_KEY)},
    "no key": {"json": HOT["/v1/chat/completions"]},
    "malformed key": {"json": HOT["/v1/chat/completions"], "headers": bearer("sk-nope")},
    "unknown key": {"json": HOT["/v1/chat/completions"], "headers": bearer("ngk_" + "d" * 40)},
    "revoked key": {"json": HOT["/v1/chat/completions"], "headers": bearer(REVOKED_KEY)},
    "management key": {"json": HOT["/v1/chat/completions"], "headers": bearer(MANAGEMENT_KEY)},
    "not json": {"content": b"{}", "headers": {**bearer(INFERENCE_KEY), "content-type": "text/plain"}},
    "bad json": {"content": b"{", "headers": {**bearer(INFERENCE_KEY), "content-type": "application/json"}},
    "invalid": {"json": {"model": "m", "messages": []}, "headers": bearer(INFERENCE_KEY)},
    "declared too large": {
        "content": b"x",
        "headers": {**bearer(INFERENCE_KEY), "content-type": "application/json", "content-length": str(LIMIT + 1)},
    },
    "streamed too large": {
        "content": streamed(LIMIT),
        "headers": {**bearer(INFERENCE_KEY), "content-type": "application/json"},
    },
    "rejected": {"json": HOT["/v1/chat/completions"], "headers": bearer(INFERENCE_KEY), "reject": True},
    "billing away": {"json": HOT["/v1/chat/completions"], "headers": bearer(INFERENCE_KEY), "billing_away": True},
}


def comparable(answer: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (a request id's random part left out) and body."""
    headers = [(k, v.split("-", 1)[0] if k == "x-request-id" else v) for k, v in answer.headers.multi_items()]
    return answer.status_code, headers, answer.content


@pytest.mark.parametrize("case", list(CASES))
async def test_the_fast_path_answers_as_fastapi_did(case: str, solved: list[object]) -> None:
    answers = []
    for fast in (True, False):
        request = dict(CASES[case])
        if case == "streamed too large":
            request["content"] = streamed(LIMIT)
        bus = Bus()
        if request.pop("reject", False):
            bus.reject = RouteRejected(error=errors.service_unavailable("No hoster.", 7), headers={"x-why": "test"})
        bus.billing_away = request.pop("billing_away", False)
        solved.clear()
        answers.append(comparable(await call(await ingress(bus, fast), "POST", "/v1/chat/completions", **request)))
        # FastAPI solved dependencies only without the fast path (and a declared length over the limit is
        # refused before either)
        assert bool(solved) is (not fast and case != "declared too large")
    assert answers[0] == answers[1]
    statuses = {"answered": 200, "management key": 403, "not json": 415, "bad json": 400, "invalid": 400,
                "rejected": 503, "billing away": 503, "declared too large": 413, "streamed too large": 413}  # fmt: skip
    assert answers[0][0] == statuses.get(case, 401)


@pytest.mark.parametrize("path", list(HOT))
async def test_every_inference_route_takes_the_fast_path(path: str, solved: list[object]) -> None:
    app = await ingress(Bus(), fast=True)
    before = HTTP_REQUESTS.labels(path, "200")._value.get()
    answer = await call(app, "POST", path, json=HOT[path], headers=bearer(INFERENCE_KEY))
    assert answer.status_code == 200, answer.text
    assert answer.content == ANSWER
    assert answer.headers["x-computeshare-hoster"] == "h1"
    assert solved == []
    assert HTTP_REQUESTS.labels(path, "200")._value.get() == before + 1  # labelled by its route, as from FastAPI


async def test_other_methods_and_routes_and_traced_requests_stay_with_fastapi(solved: list[object]) -> None:
    app = await ingress(Bus(), fast=True)
    assert (await call(app, "GET", "/v1/chat/completions")).status_code == 405
    assert (await call(app, "POST", "/v1/chat/completions/", json={})).status_code == 307
    assert (await call(app, "GET", "/v1/credits")).status_code == 401
    assert len(solved) == 1  # /v1/credits
    # FastAPI's own OpenTelemetry instrumentation observes the request (tracing on): FastAPI serves it, its spans
    # (dependencies, endpoint) as they were.
    sent: list[Message] = []
    body = orjson.dumps(HOT["/v1/embeddings"])
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {INFERENCE_KEY}".encode())],
        "client": ("127.0.0.1", 1), "server": ("gw", 80), "fastapi.telemetry": object(),
    }  # fmt: skip

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert len(solved) == 2


def test_each_hot_endpoint_takes_what_the_fast_path_solves_for_it() -> None:
    """The fast path passes the caller ``authenticate`` finds, the gateway and the settings; an endpoint that
    came to depend on anything else would be served without it."""
    app = build_app(IngressSettings(metrics_port=0))
    hot = [route for route in api_routes(app.routes) if route.endpoint in HOT_ENDPOINTS]
    assert sorted(route.path for route in hot) == sorted(HOT)
    for route in hot:
        assert route.methods == {"POST"}
        assert [(d.name, d.call) for d in route.dependant.dependencies] == [
            ("caller", authenticate),
            ("gateway", gateway_of),
            ("settings", settings_of),
        ]
        assert [p.name for p in route.dependant.query_params + route.dependant.header_params] == []
        assert route.body_field is None


async def test_the_openapi_document_is_the_one_fastapi_serves_without_the_fast_path() -> None:
    documents = [(await call(await ingress(Bus(), fast), "GET", "/openapi.json")).content for fast in (True, False)]
    assert documents[0] == documents[1]
    paths = orjson.loads(documents[0])["paths"]
    assert all("post" in paths[path] and "requestBody" in paths[path]["post"] for path in HOT)
