"""The router against hosters played by the test on a real nats-server: answers out of order, or not at all."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout

from libs.contracts import frames, subjects
from libs.contracts.billing import Caller, RateLimitState, RequestFinished, Reserved
from libs.contracts.common import ErrorReport, Usage
from libs.contracts.routing import AttemptDispatch, RequestCancelled, RequestDelivered, RouteRequest, RoutingPreferences
from libs.platform.broker import ensure_streams
from libs.platform.ids import new_request_id
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.integration.request_path.scripted_hoster import ScriptedHoster
from tests.integration.request_path.test_router_adapter import send, until_terminal
from tests.waits import until_router_lists

pytestmark = pytest.mark.integration

MODEL = "scripted-model"


async def play_billing(nc: Client, admit_after_s: float = 0.0) -> asyncio.Queue[RequestFinished]:
    """Billing, played by the test: every request is admitted (after ``admit_after_s``); the requests the
    router reports finished come out of the returned queue."""

    async def admit(msg: Msg) -> None:
        await asyncio.sleep(admit_after_s)
        await msg.respond(Reserved(rate=RateLimitState()).model_dump_json().encode())

    finished: asyncio.Queue[RequestFinished] = asyncio.Queue()

    async def on_finished(msg: Msg) -> None:
        await finished.put(RequestFinished.model_validate_json(msg.data))

    await nc.subscribe(subjects.RESERVE_CREDITS, cb=admit)
    await nc.subscribe(subjects.REQUEST_FINISHED, cb=on_finished)
    return finished


async def paid_route(nc: Client, stream: bool = False, tier: str = "balanced") -> RouteRequest:
    """A route request with a caller (so billing admits and settles it), its reply subject subscribed."""
    request_id = new_request_id()
    reply = subjects.reply_subject("test-ingress", request_id)
    await nc.subscribe(reply + ".>")
    return RouteRequest(
        request_id=request_id, reply_subject=reply, model=MODEL, stream=stream, include_usage=False,
        created=int(time.time()), routing=RoutingPreferences.model_validate({"tier": tier}),
        caller=Caller(account_id=str(uuid.uuid4()), key_id="key"),
        body={"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20},
    )  # fmt: skip


@pytest.fixture
async def platform(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    nc = await nats_server.connect("test-ingress")
    await ensure_streams(nc)
    spawn("router", "router", nats_server.env("router", "router"), "router ready")
    yield nc
    await nc.close()


async def test_an_outcome_that_overtakes_its_accept_still_ends_the_request(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """The accept and the outcome travel on two subscriptions: an attempt that fails at once may be heard
    failed before it is heard taken. The router must still act on the outcome, not leave the client waiting."""

    async def fail_then_accept(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.report(dispatch, "failed")
        await hoster.nc.flush()
        await hoster.accept(dispatch)

    hoster = await ScriptedHoster.join(nats_server, tmp_path, MODEL, fail_then_accept)
    try:
        await until_router_lists(platform, MODEL)
        _, decision, queue = await send(platform, model=MODEL, stream=False)
        assert decision.get("hoster_id") == hoster.hoster_id, decision
        got = await until_terminal(queue, timeout_s=5)
        assert got[-1].kind == frames.ERROR
        assert ErrorReport.model_validate(orjson.loads(got[-1].body)).code == "all_hosters_failed"
    finally:
        await hoster.close()


async def test_a_failovers_outcome_heard_before_its_accept_is_billed_with_the_request(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """The first hoster fails; the second reports its success before its accept arrives. The replayed outcome
    belongs to the same request as the failed attempt: the request settles once, with the second attempt's
    usage billed (a replay used to bill into a list the failover then replaced, and the request never
    settled)."""

    async def fail(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.report(dispatch, "failed")

    async def succeed_then_accept(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12))
        await hoster.nc.flush()
        await hoster.accept(dispatch)

    finished = await play_billing(platform)
    cheap = await ScriptedHoster.join(nats_server, tmp_path, MODEL, fail, price=1000)
    dear = await ScriptedHoster.join(nats_server, tmp_path, MODEL, succeed_then_accept, price=2000)
    try:
        await until_router_lists(platform, MODEL, hosters=2)
        route = await paid_route(platform, tier="cheapest")
        request_id = route.request_id
        notices = await platform.subscribe(subjects.control_subject(route.reply_subject))
        decision = await platform.request(subjects.ROUTE_REQUEST, route.model_dump_json().encode(), timeout=5)
        accepted = orjson.loads(decision.data)
        assert accepted["hoster_id"] == cheap.hoster_id
        notice = frames.decode((await notices.next_msg(timeout=5)).data)
        assert (notice.kind, notice.attempt) == (frames.ATTEMPT, 2)  # the failover, named once it was taken
        # The ingress's word, at the end: attempt 2's content reached the client (its 40 bytes of text).
        note = RequestDelivered(request_id=request_id, attempt=2, text_bytes=40, choices=1, frames=1)
        await platform.publish(subjects.request_delivered(accepted["router_id"]), note.model_dump_json().encode())
        event = await asyncio.wait_for(finished.get(), 10)
        assert event.request_id == request_id
        assert event.outcome == "succeeded"
        [billed] = event.attempts
        assert (billed.attempt, billed.hoster_id) == (2, dear.hoster_id)
        assert (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (5, 7)
        await asyncio.sleep(0.5)
        assert finished.empty()  # settled once
    finally:
        await cheap.close()
        await dear.close()


@pytest.mark.parametrize("late", ["billing", "hoster"])
async def test_a_request_the_ingress_stopped_waiting_for_is_stopped_and_charges_nothing(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path, late: str
) -> None:
    """The ingress gives up on the route (its client got a 503) while billing is slow to admit, or while the
    hoster is slow to take the attempt. The router must not start it, or must stop it, and settle it with
    nothing charged: the hold is released and the hoster's report of the output is not billed."""

    async def slow_accept(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        if late == "hoster":
            await asyncio.sleep(0.8)
        await hoster.accept(dispatch)
        await asyncio.sleep(0.2)
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12))

    finished = await play_billing(platform, admit_after_s=0.8 if late == "billing" else 0.0)
    hoster = await ScriptedHoster.join(nats_server, tmp_path, MODEL, slow_accept)
    stops = await platform.subscribe(subjects.attempt_cancel(hoster.hoster_id))
    try:
        await until_router_lists(platform, MODEL)
        route = await paid_route(platform)
        request_id = route.request_id
        with pytest.raises(NatsTimeout):  # the ingress's route timeout, made short
            await platform.request(subjects.ROUTE_REQUEST, route.model_dump_json().encode(), timeout=0.3)
        cancel = RequestCancelled(request_id=request_id, reason="route_timeout")
        await platform.publish(subjects.REQUEST_CANCELLED, cancel.model_dump_json().encode())

        event = await asyncio.wait_for(finished.get(), 10)
        assert event.request_id == request_id
        assert event.attempts == []  # nothing charged: the whole hold is released
        if late == "billing":
            assert hoster.attempts == []  # never started
        else:
            assert [d.request_id for d in hoster.attempts] == [request_id]
            stop = RequestCancelled.model_validate_json((await stops.next_msg(timeout=5)).data)
            assert stop.request_id == request_id  # the hoster was told to stop
        await asyncio.sleep(2.5)  # past the router's wait for a delivery note
        assert finished.empty()  # settled once
    finally:
        await hoster.close()


async def test_a_request_whose_outcome_never_comes_is_settled_and_forgotten(
    nats_server: NatsTestServer, spawn: Spawn, tmp_path: Path
) -> None:
    """The hoster takes the attempt and its report is lost (a reconnect): the router does not keep the request
    for ever; past CS_ROUTER_IN_FLIGHT_MAX_S it settles it on what it billed (nothing) and forgets it."""
    nc = await nats_server.connect("test-ingress")
    await ensure_streams(nc)
    spawn("router", "router", {**nats_server.env("router", "router"), "CS_ROUTER_IN_FLIGHT_MAX_S": "1"}, "router ready")

    async def silent(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.accept(dispatch)
        hoster.spawn(hoster.keep_alive(dispatch, dispatch.reply_subject))

    finished = await play_billing(nc)
    hoster = await ScriptedHoster.join(nats_server, tmp_path, MODEL, silent)
    try:
        await until_router_lists(nc, MODEL)
        route = await paid_route(nc, stream=True)
        request_id = route.request_id
        decision = await nc.request(subjects.ROUTE_REQUEST, route.model_dump_json().encode(), timeout=5)
        assert orjson.loads(decision.data)["status"] == "accepted"
        started = time.monotonic()
        event = await asyncio.wait_for(finished.get(), 10)
        assert (event.request_id, event.outcome, event.attempts) == (request_id, "failed", [])
        assert 1.0 <= time.monotonic() - started < 4.0
    finally:
        await hoster.close()
        await nc.close()


async def test_a_router_that_stops_settles_its_requests_first(
    nats_server: NatsTestServer, spawn: Spawn, tmp_path: Path
) -> None:
    """A router told to stop (a rolling restart) while a stream is running takes no new routes, waits for the
    stream to end (the hoster's report and the ingress's note still reach it) and settles it, charged for what
    the client received, before it exits: nothing is left to billing's sweep."""
    nc = await nats_server.connect("test-ingress")
    await ensure_streams(nc)
    router = spawn("router", "router", nats_server.env("router", "router"), "router ready")
    release = asyncio.Event()

    async def slow(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.send_chunk(dispatch, msg.reply, 0, content="Hello")
        await release.wait()
        await hoster.send_chunk(dispatch, msg.reply, 1, content=" there", finish_reason="stop")
        await hoster.nc.publish(msg.reply, frames.encode(frames.END, dispatch.attempt, 2))
        await hoster.report(dispatch, "succeeded", Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7), 3)

    finished = await play_billing(nc)
    hoster = await ScriptedHoster.join(nats_server, tmp_path, MODEL, slow)
    try:
        await until_router_lists(nc, MODEL)
        route = await paid_route(nc, stream=True)
        chunks = await nc.subscribe(route.reply_subject + ".>")
        decision = orjson.loads((await nc.request(subjects.ROUTE_REQUEST, route.model_dump_json().encode(), 5)).data)
        assert frames.decode((await chunks.next_msg(timeout=5)).data).kind == frames.CHUNK
        router.signal(signal.SIGTERM)
        release.set()
        assert frames.decode((await chunks.next_msg(timeout=5)).data).kind == frames.CHUNK
        assert frames.decode((await chunks.next_msg(timeout=5)).data).kind == frames.END
        note = RequestDelivered(request_id=route.request_id, attempt=1, text_bytes=11, choices=1, frames=2)
        await nc.publish(subjects.request_delivered(decision["router_id"]), note.model_dump_json().encode())
        event = await asyncio.wait_for(finished.get(), 15)
        assert (event.request_id, event.outcome) == (route.request_id, "succeeded")
        [billed] = event.attempts
        assert (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (5, 2)
        assert await asyncio.to_thread(router.wait_exited, 15)  # and then it exits
    finally:
        await hoster.close()
        await nc.close()
