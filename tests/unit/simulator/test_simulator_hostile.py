"""The simulator's hostile faults, which the adapter's bounds are tested against."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette

from tests.unit.simulator.test_simulator_app import RawExchange, chat_body, chunks, simulator


async def post(app: Starlette, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
        return await client.post("/v1/chat/completions", json=body)


async def test_endless_line_sends_its_bytes_without_ever_ending_the_line() -> None:
    body = chat_body(stream=True, simulator={"fault": "endless_line", "fault_bytes": 300_000})

    response = await post(simulator(), body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(response.content) == 300_000
    assert response.content.startswith(b"data: {")
    assert b"\n" not in response.content


async def test_endless_line_by_default_goes_on_for_ever() -> None:
    exchange = RawExchange(simulator(fault="endless_line", fault_rate=1), chat_body(stream=True))
    task = exchange.run()
    await asyncio.sleep(0.3)
    sent = sum(len(message.get("body", b"")) for message in exchange.sent)
    assert sent > 1_000_000
    assert not task.done()
    exchange.gone.set()
    await asyncio.wait_for(task, timeout=1)


async def test_huge_error_streams_an_error_body_of_the_configured_size() -> None:
    app = simulator(fault="huge_error", fault_rate=1, fault_bytes=500_000, fault_status=502)

    response = await post(app, chat_body())

    assert response.status_code == 502
    assert len(response.content) == 500_000
    assert response.content.startswith(b'{"error": {"type": "server_error", "message": "xxx')


async def test_many_choices_streams_every_choice_whatever_n_asked_for() -> None:
    body = chat_body(n=1, stream=True, simulator={"fault": "many_choices", "fault_choices": 1000})

    response = await post(simulator(), body)

    payloads = [e.removeprefix(b"data: ") for e in response.content.split(b"\n\n") if e]
    assert payloads[-1] == b"[DONE]"
    events = chunks(payloads[:-1])
    assert sorted(event["choices"][0]["index"] for event in events) == list(range(1000))
    assert {event["object"] for event in events} == {"chat.completion.chunk"}


async def test_stall_sends_some_chunks_then_goes_silent_until_the_client_leaves() -> None:
    body = chat_body(stream=True, simulator={"fault": "stall", "fault_after_tokens": 2})
    exchange = RawExchange(simulator(reply_tokens=10), body)
    task = exchange.run()
    await asyncio.wait_for(exchange.first_body.wait(), timeout=1)
    await asyncio.sleep(0.3)
    assert not task.done()
    sent = b"".join(message.get("body", b"") for message in exchange.sent)
    payloads = [e.removeprefix(b"data: ") for e in sent.split(b"\n\n") if e]
    assert b"[DONE]" not in payloads
    assert len(payloads) == 1 + 2
    assert [orjson.loads(p)["object"] for p in payloads] == ["chat.completion.chunk"] * 3

    exchange.gone.set()
    await asyncio.wait_for(task, timeout=1)
