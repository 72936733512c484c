"""The adapter's HTTP client against a real local server playing a hoster: what a request carries (the
hoster's API key, no compression asked for), and, hosters being strangers, nothing one sends persists for the
next call (a Set-Cookie is never sent back) and no redirect is followed; its refusals of the client's own
parameters are the client's errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from nats.aio.client import Client

from libs.devstack.stack import demo_hoster
from libs.platform.broker import ensure_streams
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.integration.request_path.test_adapter_deadlines import run_attempt

pytestmark = pytest.mark.integration

API_KEY = "hoster-api-key"
SET_COOKIES = (
    b"set-cookie: session=hoster-secret; Path=/\r\n"
    b"set-cookie: tracker=1; Path=/v1; Max-Age=3600; HttpOnly\r\n"
    b"set-cookie: wide=1; Domain=localhost; Path=/\r\n"
)


def sse_answer() -> bytes:
    chunk = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
    body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + SET_COOKIES + b"connection: close\r\n\r\n" + body


def error_answer(status: int) -> Callable[[], bytes]:
    body = orjson.dumps({"error": {"message": f"refused with {status}", "type": "invalid_request_error"}})
    head = f"HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return lambda: head.encode() + b"connection: close\r\n\r\n" + body


def redirect_answer() -> bytes:
    return (
        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /v1/elsewhere\r\n" + SET_COOKIES
        + b"content-length: 0\r\nconnection: close\r\n\r\n"
    )  # fmt: skip


@dataclass
class Hoster:
    """An OpenAI-compatible server that records the head of every request it gets."""

    answer: Callable[[], bytes]
    heads: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(self.answer())
        await writer.drain()
        writer.close()


@pytest.fixture
def hoster() -> Hoster:
    """The hoster, answering every request with a stream that sets cookies (a test may change its answer)."""
    return Hoster(sse_answer)


@pytest.fixture
async def adapter(hoster: Hoster, nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    """An adapter in front of ``hoster``; a router's NATS connection to drive it."""
    server = await asyncio.start_server(hoster.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # A host name, not an address: cookie jars that refuse cookies from IP addresses would store these.
    env = {"CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://localhost:{port}/v1", api_key=API_KEY)])}
    spawn("adapter", "hoster_adapter", {**nats_server.env("adapter", "hoster_adapter"), **env},
          "hoster_adapter ready")  # fmt: skip
    nc = await nats_server.connect("test-router")
    await ensure_streams(nc)
    async with server:
        yield nc
    await nc.close()


async def test_a_hosters_cookies_are_never_sent_back(hoster: Hoster, adapter: Client) -> None:
    for stream in (False, True, False):
        event, _ = await run_attempt(adapter, None, stream)
        assert (event.outcome, event.error) == ("succeeded", None)
    assert len(hoster.heads) == 3
    for head in hoster.heads:
        assert b"\r\ncookie:" not in head.lower(), head


async def test_a_request_carries_the_hosters_key_and_asks_for_no_compression(hoster: Hoster, adapter: Client) -> None:
    for stream in (False, True):
        event, _ = await run_attempt(adapter, None, stream)
        assert event.outcome == "succeeded"
    for head in hoster.heads:
        lines = head.lower().split(b"\r\n")
        # The body is parsed as it comes off the wire: a compressed one would not be.
        assert b"accept-encoding: identity" in lines
        assert f"authorization: bearer {API_KEY}".encode() in lines
        assert b"content-type: application/json" in lines
    assert [head.split(b"\r\n")[0] for head in hoster.heads] == [b"POST /v1/chat/completions HTTP/1.1"] * 2


@pytest.mark.parametrize(
    ("status", "client_error"), [(400, True), (413, True), (422, True), (401, False), (500, False)]
)
async def test_the_hosters_refusal_of_the_clients_parameters_is_the_clients_error(
    hoster: Hoster, adapter: Client, status: int, client_error: bool
) -> None:
    hoster.answer = error_answer(status)
    for stream in (False, True):
        event, _ = await run_attempt(adapter, None, stream)
        assert (event.outcome, event.upstream_status, event.client_error) == ("failed", status, client_error)
        assert event.error == f"upstream status {status}: refused with {status}"


async def test_a_redirect_is_a_failed_attempt_not_followed(hoster: Hoster, adapter: Client) -> None:
    hoster.answer = redirect_answer
    for stream in (False, True):
        event, _ = await run_attempt(adapter, None, stream)
        assert (event.outcome, event.upstream_status, event.client_error) == ("failed", 307, False)
        assert event.error is not None
        assert event.error.startswith("upstream status 307")
    assert [head.split(b" ")[1] for head in hoster.heads] == [b"/v1/chat/completions"] * 2
    assert all(b"\r\ncookie:" not in head.lower() for head in hoster.heads)
