"""No ingress route buffers a body past ``CS_INGRESS_MAX_BODY_BYTES``, whatever it declares or streams, the
console's pass-through included; the management API checks the key before it reads a byte of the body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.ingress.app import api_routes, build_app
from services.ingress.console_proxy import ConsoleProxy
from services.ingress.settings import IngressSettings

LIMIT = 64 * 1024
CHUNK = 16 * 1024


class Sender:
    """A request body streamed without a length (chunked), counting what the server pulled of it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += CHUNK
            yield b"x" * CHUNK


def ingress(console_url: str | None = None) -> FastAPI:
    return build_app(IngressSettings(max_body_bytes=LIMIT, console_url=console_url, metrics_port=0))


def assert_too_large(answer: httpx.Response) -> None:
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(LIMIT) in error["message"]


def test_no_route_declares_its_body_as_a_parameter() -> None:
    """FastAPI reads and parses a body parameter whole before any dependency (the key check) runs."""
    routes = api_routes(ingress().routes)
    assert {"/v1/chat/completions", "/v1/keys", "/v1/keys/{key_id}"} <= {r.path for r in routes}
    assert [r.path for r in routes if r.body_field is not None] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/keys"), ("PATCH", "/v1/keys/k1"), ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
     ("POST", "/console/signin"), ("POST", "/nowhere")],
)  # fmt: skip
async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(method: str, path: str) -> None:
    sender = Sender(50 * 1024 * 1024)
    transport = httpx.ASGITransport(app=ingress("http://console:8090"))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        headers = {"content-length": str(sender.total), "content-type": "application/json"}
        answer = await client.request(method, path, content=sender, headers=headers)
    assert_too_large(answer)
    assert sender.sent == 0


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/keys"), ("PATCH", "/v1/keys/k1")])
async def test_the_management_api_checks_the_key_before_reading_the_body(method: str, path: str) -> None:
    sender = Sender(50 * 1024 * 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress()), base_url="http://gw") as client:
        answer = await client.request(method, path, content=sender, headers={"content-type": "application/json"})
    assert answer.status_code == 401
    assert sender.sent == 0


def console_stub(seen: dict[str, Any]) -> FastAPI:
    """A console that reads the whole body it is sent and says how much it got."""
    app = FastAPI()

    @app.post("/console/signin")
    async def sign_in(request: Request) -> Response:
        async for chunk in request.stream():
            seen["bytes"] = seen.get("bytes", 0) + len(chunk)
        return JSONResponse(seen)

    return app


async def test_a_body_streamed_to_the_console_is_cut_off_once_past_the_limit() -> None:
    app = ingress("http://console:8090")
    [route] = [r for r in api_routes(app.routes) if r.path == "/console/{path:path}"]
    proxy: ConsoleProxy = route.endpoint.__self__  # type: ignore[attr-defined]
    seen: dict[str, Any] = {}
    proxy._transport = httpx.ASGITransport(app=console_stub(seen))
    await proxy.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as browser:
            small = await browser.post("/console/signin", content=Sender(2 * CHUNK))
            assert small.json() == {"bytes": 2 * CHUNK}  # under the limit: passed on whole
            seen.clear()
            sender = Sender(50 * 1024 * 1024)
            answer = await browser.post("/console/signin", content=sender)
    finally:
        await proxy.close()
    assert_too_large(answer)
    assert sender.sent <= LIMIT + CHUNK
    assert seen.get("bytes", 0) <= LIMIT
