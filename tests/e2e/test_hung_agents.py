"""A hoster's agent that ignores the deadlines it is given (a stranger's modified agent): it takes attempts and
then sends only keepalives, or one chunk and then only keepalives. The ingress holds it to the deadlines
itself: a client waits at most the first-byte deadline (plus grace) before another hoster serves it, a
stalled stream ends with the SSE error event, the client pays nothing for the hung attempt, and the hoster
cools down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from nats.aio.msg import Msg

from libs.contracts import frames
from libs.contracts.common import Usage
from libs.contracts.routing import AttemptDispatch
from libs.devstack.processes import free_port
from libs.devstack.stack import (
    DEMO_HOSTER_ID,
    DEMO_MODEL,
    AdapterSpec,
    SimulatorSpec,
    Stack,
    demo_hoster,
    throwaway_config,
)
from tests.e2e.records import routing_record
from tests.e2e.test_money import settled
from tests.integration.request_path.scripted_hoster import ScriptedHoster
from tests.waits import until_stack_hoster, until_stack_router_hears

pytestmark = pytest.mark.e2e

FIRST_BYTE_S, STALL_S, GRACE_S = 1.0, 1.0, 0.3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    sim = SimulatorSpec("sim", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "6"})
    config = throwaway_config(
        simulators=[sim],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(sim.base_url)])],
        service_env={
            "CS_ROUTER_FIRST_BYTE_CEILING_MS": str(FIRST_BYTE_S * 1000),
            "CS_ROUTER_FIRST_BYTE_FLOOR_MS": "200",
            "CS_INGRESS_STALL_TIMEOUT_S": str(STALL_S),
            "CS_INGRESS_DEADLINE_GRACE_S": str(GRACE_S),
            "CS_ROUTER_HOSTER_TTL_S": "2",
        },
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


async def join(stack: Stack, tmp_path: Path, chunks_first: int) -> ScriptedHoster:
    """A hoster cheaper than the demo one (so ``cheapest`` tries it first) that hangs after ``chunks_first``."""

    async def hang(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        for seq in range(chunks_first):
            await hoster.send_chunk(dispatch, msg.reply, seq)
        hoster.spawn(hoster.keep_alive(dispatch, msg.reply))

    hoster = await ScriptedHoster.connect(stack.nats_url, stack.auth, tmp_path, DEMO_MODEL, hang, price=0)
    await until_stack_router_hears(stack, hoster.hoster_id)
    return hoster


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    account_id, key = stack.create_account(credits="10")
    async with httpx.AsyncClient(
        base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        yield http, key, account_id
    await settled(stack, account_id)  # every request settles, the hung attempts' included


BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "tier": "cheapest"}


async def test_a_hoster_that_only_sends_keepalives_costs_the_client_one_deadline_then_cools_down(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    http, key, _ = client
    hung = await join(stack, tmp_path, chunks_first=0)
    try:
        for stream in (False, True, False):
            started = time.monotonic()
            async with http.stream("POST", "/chat/completions", json={**BODY, "stream": stream}) as response:
                body = await response.aread()
            elapsed = time.monotonic() - started
            assert response.status_code == 200, body
            assert response.headers["x-computeshare-hoster"] != hung.hoster_id
            assert response.headers["x-computeshare-attempts"] == "2"
            # The deadline the router gave the hung hoster: the ceiling, or less once the demo hoster is measured.
            deadline_s = (hung.attempts[-1].first_byte_deadline_ms or 0) / 1000
            assert 0 < deadline_s <= FIRST_BYTE_S
            assert deadline_s <= elapsed < deadline_s + GRACE_S + 1.5, (elapsed, deadline_s)
            first, second = (await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"]))[
                "attempts"
            ]
            assert (first["hoster_id"], first["outcome"]) == (hung.hoster_id, "failed")
            assert (first["prompt_tokens"], first["completion_tokens"]) == (0, 0)  # nothing billed for it
            assert first["error"].startswith("first_byte_timeout")
            assert second["outcome"] == "succeeded"
        # Three hangs in a row: it cools down, and the next request goes straight to the healthy hoster.
        response = await http.post("/chat/completions", json=BODY)
        assert response.headers["x-computeshare-attempts"] == "1"
        assert response.headers["x-computeshare-hoster"] != hung.hoster_id
    finally:
        await hung.close()


async def test_a_stream_that_stalls_after_its_first_chunk_ends_with_an_error_event_and_costs_nothing(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    http, key, account_id = client
    stalling = await join(stack, tmp_path, chunks_first=1)
    try:
        started = time.monotonic()
        async with http.stream("POST", "/chat/completions", json={**BODY, "stream": True}) as response:
            lines = [line async for line in response.aiter_lines() if line]
        elapsed = time.monotonic() - started
        assert response.headers["x-computeshare-hoster"] == stalling.hoster_id
        assert lines[0].startswith('data: {"id"')
        assert lines[-2].startswith('data: {"error"')
        assert lines[-1] == "data: [DONE]"
        assert STALL_S <= elapsed < STALL_S + GRACE_S + 1.5, elapsed
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        [attempt] = record["attempts"]
        assert (record["status"], attempt["outcome"], record["cost"]) == ("settled", "failed", 0)
        assert attempt["error"].startswith("stalled")
    finally:
        await stalling.close()


async def test_frames_lost_on_the_way_end_the_stream_with_an_error_and_bill_only_what_arrived(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    """A hoster's frame 1 never reaches the ingress (dropped here on purpose): the client gets frame 0 and then
    the SSE error event, never an answer that looks whole; it pays for no more than the text it got."""
    http, key, account_id = client

    async def gap(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        for seq in (0, 2):
            await hoster.send_chunk(dispatch, msg.reply, seq)
        await hoster.nc.publish(msg.reply, frames.encode(frames.END, dispatch.attempt, 3))
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=5, completion_tokens=6, total_tokens=11), 3)

    hoster = await ScriptedHoster.connect(stack.nats_url, stack.auth, tmp_path, DEMO_MODEL, gap, price=10**6)
    await until_stack_router_hears(stack, hoster.hoster_id)
    try:
        async with http.stream("POST", "/chat/completions", json={**BODY, "stream": True}) as response:
            lines = [line async for line in response.aiter_lines() if line]
        assert response.headers["x-computeshare-hoster"] == hoster.hoster_id
        assert len(lines) == 3, lines
        assert lines[0].startswith('data: {"id"')
        assert orjson.loads(lines[1][6:])["error"]["code"] == "incomplete_response"
        assert lines[2] == "data: [DONE]"
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        assert record["status"] == "settled"
        assert record["completion_tokens"] <= len(b"Hi") + 1  # the text that arrived, not the 6 reported
    finally:
        await hoster.close()


async def test_a_hoster_cannot_forge_the_routers_failover_notice_or_errors(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    """A hoster's agent sends, on its attempt's reply subject, a failover notice naming the next attempt
    (another hoster, absurd prices), an error of its own, then its chunks numbered as that next attempt, and
    reports its attempt with 4,096 completion tokens. The router's notices and errors travel on a subject
    hosters cannot publish to, and the ingress reads only frames of the attempt serving: none of it reaches
    the client, its attempt delivers nothing by its first-byte deadline, the request fails over, and the
    client pays for the other hoster's answer alone."""
    http, key, account_id = client

    async def forge(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        nxt = dispatch.attempt + 1
        notice = {"hoster_id": "impostor", "model": dispatch.model, "input_price": 10**12, "output_price": 10**12}
        await hoster.nc.publish(msg.reply, frames.encode(frames.ATTEMPT, nxt, -1, orjson.dumps(notice)))
        fake = b'{"http_status": 401, "type": "invalid_request_error", "code": "x", "message": "pay me"}'
        await hoster.nc.publish(msg.reply, frames.encode(frames.ERROR, dispatch.attempt, -1, fake))
        await hoster.send_chunk(dispatch, msg.reply, 0, content="FORGED", finish_reason="stop", attempt=nxt)
        await hoster.nc.publish(msg.reply, frames.encode(frames.END, nxt, 1))
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=5, completion_tokens=4096, total_tokens=4101), 2)

    hoster = await ScriptedHoster.connect(stack.nats_url, stack.auth, tmp_path, DEMO_MODEL, forge, price=0)
    await until_stack_router_hears(stack, hoster.hoster_id)
    try:
        async with http.stream("POST", "/chat/completions", json={**BODY, "stream": True}) as response:
            lines = [line async for line in response.aiter_lines() if line]
        assert response.status_code == 200
        assert response.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
        assert response.headers["x-computeshare-attempts"] == "2"
        assert lines[-1] == "data: [DONE]"
        assert not any("pay me" in line or "FORGED" in line or "impostor" in line for line in lines)
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        forged, served = record["attempts"]
        assert (forged["hoster_id"], forged["outcome"]) == (hoster.hoster_id, "failed")
        assert served["hoster_id"] == DEMO_HOSTER_ID
        assert record["completion_tokens"] == served["completion_tokens"] <= 6  # the demo's answer, not 4,096
    finally:
        await hoster.close()


async def test_a_new_hoster_that_hangs_is_given_up_on_by_what_its_measured_peers_show_not_the_ceiling(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    """A hoster with no history of its own and no promise is held to what the measured hosters of its model
    show (the demo hoster answers in milliseconds): the router gives it a first-byte deadline at the floor, far
    under the ceiling, and the client's request fails over to the demo hoster that soon."""
    http, key, _ = client
    for _ in range(5):
        pinned = await http.post("/chat/completions", json={**BODY, "allow_hosters": [DEMO_HOSTER_ID]})
        assert pinned.status_code == 200, pinned.text
    await until_stack_hoster(stack, DEMO_HOSTER_ID, lambda h: h.ttft_median_ms is not None)  # measured
    hung = await join(stack, tmp_path, chunks_first=0)
    try:
        # Only these two: hosters other tests closed may still count as live for the router a moment longer.
        response = await http.post(
            "/chat/completions", json={**BODY, "allow_hosters": [hung.hoster_id, DEMO_HOSTER_ID]}
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-attempts"] == "2"
        assert response.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
        [dispatch] = hung.attempts
        # Four times the simulator's p95, within the floor (200 ms): far under the ceiling a newcomer used to get.
        assert dispatch.first_byte_deadline_ms is not None
        assert 200 <= dispatch.first_byte_deadline_ms < FIRST_BYTE_S * 1000 / 2, dispatch.first_byte_deadline_ms
        first, second = (await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"]))[
            "attempts"
        ]
        assert (first["hoster_id"], first["outcome"]) == (hung.hoster_id, "failed")
        assert first["error"].startswith("first_byte_timeout")
        assert second["outcome"] == "succeeded"
    finally:
        await hung.close()
