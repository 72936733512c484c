"""A hostile client holding a real hoster's credentials, against a real nats-server in operator mode: every
operation outside the hoster's own subjects is refused by the server, not by our code."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from libs.contracts import subjects
from libs.devstack.infra import start_nats
from libs.devstack.processes import free_port
from libs.platform.broker import ensure_streams
from libs.platform.natsauth import HOSTER_MAX_PAYLOAD, HOSTER_MAX_SUBS, AuthStore, push_account_update
from tests.conftest import NatsTestServer

pytestmark = pytest.mark.integration

H1 = str(uuid.uuid4())
H2 = str(uuid.uuid4())
# How long a test waits for what the server surely does soon (a delivery, a refusal): generous, so that only a
# server that never does it fails the test, not a busy machine.
WAIT_S = 15.0


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Until ``condition`` holds (messages a callback collects have arrived); fails naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.02)


@dataclass
class Hostile:
    """A client with hoster H1's credentials that records what the server says to it."""

    nc: Client
    errors: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def refused(self, substring: str, timeout_s: float = WAIT_S) -> bool:
        """Whether the server sent a permissions violation mentioning ``substring`` (nats-py lower-cases it)
        within ``timeout_s`` (returns as soon as it did)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if any("permissions violation" in e and substring.lower() in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.02)
        return False


@pytest.fixture
async def platform(nats_server: NatsTestServer) -> AsyncIterator[Client]:
    nc = await nats_server.connect("platform")
    await ensure_streams(nc)
    yield nc
    await nc.close()


async def connect_hoster(nats_server: NatsTestServer, tmp_path: Path, hoster_id: str) -> Hostile:
    _, creds = nats_server.auth.mint_hoster(hoster_id, f"hoster-{hoster_id[:4]}")
    path = nats_server.auth.write_creds(tmp_path / f"{hoster_id}.creds", creds)
    hostile = Hostile(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        hostile.errors.append(str(exc))

    async def on_closed() -> None:
        hostile.closed.set()

    hostile.nc = await nats.connect(
        nats_server.url,
        user_credentials=str(path),
        inbox_prefix=subjects.hoster_inbox_prefix(hoster_id),
        error_cb=on_error,
        closed_cb=on_closed,
        max_reconnect_attempts=0,
    )
    return hostile


@pytest.fixture
async def hostile(nats_server: NatsTestServer, tmp_path: Path) -> AsyncIterator[Hostile]:
    h = await connect_hoster(nats_server, tmp_path, H1)
    yield h
    await h.nc.close()


async def collect(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return got


async def refused_connection(url: str, **options: Any) -> None:
    """Assert the server refuses a connection; the client's socket is closed either way."""
    nc = NATS()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(url, allow_reconnect=False, connect_timeout=2, **options)
    finally:
        await nc.close()


async def test_anonymous_clients_are_refused(nats_server: NatsTestServer) -> None:
    await refused_connection(nats_server.url)


@pytest.mark.parametrize(
    "subject",
    [
        ">",
        subjects.attempt_start(H2),
        subjects.attempt_cancel(H2),
        "ingress.reply.>",
        subjects.reply_inbox("some-ingress"),
        "billing.>",
        subjects.RESERVE_CREDITS,
        subjects.LEASE_CREDITS,
        "router.>",
        subjects.lease_recall("router-1"),
        subjects.HOSTER_HEARTBEAT_ALL,
        subjects.ATTEMPT_FINISHED_ALL,
        "_INBOX.>",
        f"{subjects.hoster_inbox_prefix(H2)}.>",
        "$JS.API.>",
    ],
)
async def test_a_hoster_cannot_subscribe_outside_its_own_subjects(
    hostile: Hostile, platform: Client, subject: str
) -> None:
    got = await collect(hostile.nc, subject)
    assert await hostile.refused(f'subscription to "{subject}"')
    concrete = subject.replace(">", "x.y").replace("*", "z")
    await platform.publish(concrete, b"secret")
    await platform.flush()
    await asyncio.sleep(0.2)
    assert got == []


@pytest.mark.parametrize(
    "subject",
    [
        subjects.ROUTE_REQUEST,
        # A hoster cannot pass a spot check of its own making, nor judge its attempts.
        subjects.SPOT_CHECK_JUDGED,
        subjects.ATTEMPTS_OBSERVED,
        subjects.RESERVE_CREDITS,
        subjects.VERIFY_KEY,
        subjects.REQUEST_FINISHED,
        subjects.LEASE_CREDITS,
        subjects.LEASE_ADMITTED,
        subjects.LEASE_RETURNED,
        subjects.lease_recall("router-1"),
        subjects.REQUEST_CANCELLED,
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.DELETE.USAGE",
        subjects.reply_subject("some-ingress", "chatcmpl-not-mine"),
        subjects.control_subject(subjects.reply_subject("some-ingress", "chatcmpl-not-mine")),
        subjects.hoster_heartbeat(H2),
        subjects.attempt_finished(H2, "router-1"),
        subjects.attempt_accepted(H2, "router-1"),
        subjects.attempt_start(H2),
    ],
)
async def test_a_hoster_cannot_publish_outside_its_own_subjects(
    hostile: Hostile, platform: Client, subject: str
) -> None:
    got = await collect(platform, subject)
    await hostile.nc.publish(subject, b"forged")
    assert await hostile.refused(f'publish to "{subject}"')
    await asyncio.sleep(0.1)
    assert got == []


async def test_a_hoster_may_reply_only_to_the_attempts_it_received(hostile: Hostile, platform: Client) -> None:
    mine = subjects.reply_subject("ingress-1", "chatcmpl-mine")
    other = subjects.reply_subject("ingress-1", "chatcmpl-other")
    frames_mine = await collect(platform, mine)
    frames_other = await collect(platform, other)
    attempts = await hostile.nc.subscribe(subjects.attempt_start(H1), queue=subjects.QUEUE_HOSTER_ADAPTER)
    await hostile.nc.flush()
    await platform.publish(subjects.attempt_start(H1), b"{}", reply=mine)
    await platform.flush()
    attempt = await attempts.next_msg(timeout=WAIT_S)
    assert attempt.reply == mine
    for i in range(50):  # a stream is many frames on one reply subject
        await hostile.nc.publish(attempt.reply, b"frame %d" % i)
    await hostile.nc.publish(other, b"injected")
    assert await hostile.refused(f'publish to "{other}"')
    # Nor on its own attempt's control subject, where the router's failover notices and errors travel: a
    # hoster cannot speak for the router.
    control = subjects.control_subject(mine)
    frames_control = await collect(platform, control)
    await hostile.nc.publish(control, b"a2:-1\n{}")
    assert await hostile.refused(f'publish to "{control}"')
    # A last frame after the refused publishes: the server handles one connection's messages in order, so once
    # it has arrived, anything those had let through would have arrived before it.
    await hostile.nc.publish(attempt.reply, b"last")
    await until(lambda: bool(frames_mine) and frames_mine[-1].data == b"last", "the last frame")
    assert len(frames_mine) == 51
    assert frames_other == []
    assert frames_control == []


async def test_a_hoster_announces_and_reports_under_its_own_id_and_stores_nothing(
    hostile: Hostile, platform: Client
) -> None:
    """Its heartbeats and its outcome reports are core messages (a report goes to the router that dispatched):
    no stream holds a subject a hoster may publish on, so nothing it sends is stored, and no message id of its
    shares a JetStream namespace with the platform's."""
    heartbeats = await collect(platform, subjects.HOSTER_HEARTBEAT_ALL)
    reports = await collect(platform, subjects.attempts_finished_for_router("router-1"))
    await hostile.nc.publish(subjects.hoster_heartbeat(H1), b"{}")
    await hostile.nc.publish(subjects.attempt_finished(H1, "router-1"), b"{}")
    await hostile.nc.flush()
    # As a JetStream publish (a request no stream answers: only the router's core subscription hears it).
    with pytest.raises((nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError)):
        await hostile.nc.jetstream(timeout=0.5).publish(
            subjects.attempt_finished(H1, "router-1"), b"{}", headers={"Nats-Msg-Id": "chatcmpl-x:finished"}
        )
    await until(lambda: len(heartbeats) >= 1 and len(reports) >= 2, "the heartbeat and both reports")
    assert [m.subject for m in heartbeats] == [subjects.hoster_heartbeat(H1)]
    assert [m.subject for m in reports] == [subjects.attempt_finished(H1, "router-1")] * 2
    for stream in (subjects.USAGE_STREAM, subjects.DEADLETTER_STREAM):
        assert (await platform.jetstream().stream_info(stream)).state.messages == 0
    assert hostile.errors == []


async def test_a_hoster_cannot_use_the_jetstream_api(hostile: Hostile) -> None:
    with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
        await hostile.nc.jetstream(timeout=1).add_stream(StreamConfig(name="MINE", subjects=["mine.>"]))
    assert await hostile.refused('publish to "$JS.API.STREAM.CREATE.MINE"')


async def test_a_revoked_hoster_is_cut_off_at_once_and_refused_after(
    nats_server: NatsTestServer, tmp_path: Path
) -> None:
    public_key, creds = nats_server.auth.mint_hoster(H2, "to-revoke")
    path = nats_server.auth.write_creds(tmp_path / "revoked.creds", creds)
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_error(exc: Exception) -> None:
        pass

    nc = await nats.connect(
        nats_server.url, user_credentials=str(path), disconnected_cb=on_disconnect, error_cb=on_error,
        allow_reconnect=False,
    )  # fmt: skip
    nats_server.auth.revoke(public_key)
    await push_account_update(nats_server.url, nats_server.auth)
    await asyncio.wait_for(disconnected.wait(), 10)
    await refused_connection(nats_server.url, user_credentials=str(path))
    await nc.close()


async def test_a_platform_adapter_answers_on_reply_subjects_without_a_response_permission(
    nats_server: NatsTestServer, platform: Client, hostile: Hostile
) -> None:
    """A platform-run adapter's answers must survive its reconnect to another NATS node, where the response
    permission of the connection that received the attempt is gone: it may publish on the reply subjects (and
    still not on the control subjects, nor outside a hoster's own); a stranger's agent may not."""
    reply = subjects.reply_subject("ingress-1", "chatcmpl-after-a-reconnect")
    frames_got = await collect(platform, reply)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    adapter = await nats.connect(
        nats_server.url,
        user_credentials=str(nats_server.creds("adapter", "hoster_adapter")),
        inbox_prefix=subjects.hoster_inbox_prefix("platform"),
        error_cb=on_error,
        max_reconnect_attempts=0,
    )
    try:
        await adapter.publish(reply, b"c1:0\n{}")
        await adapter.publish(subjects.control_subject(reply), b"a2:-1\n{}")
        await adapter.flush()
        await hostile.nc.publish(reply, b"forged")
        assert await hostile.refused(f'publish to "{reply}"')
        await until(lambda: bool(frames_got), "the adapter's frame")
        assert [m.data for m in frames_got] == [b"c1:0\n{}"]
        assert any("permissions violation" in e and "ingress.control" in e for e in errors), errors
    finally:
        await adapter.close()


async def test_a_hoster_past_its_subscription_limit_is_refused_and_another_is_not(
    nats_server: NatsTestServer, platform: Client, tmp_path: Path
) -> None:
    """The server holds each hoster's connection to ``HOSTER_MAX_SUBS`` subscriptions (its own inbox alone
    would otherwise take any number); another hoster, with its own credentials, subscribes as before."""
    greedy = await connect_hoster(nats_server, tmp_path, H1)
    other = await connect_hoster(nats_server, tmp_path, H2)
    try:
        inbox = subjects.hoster_inbox_prefix(H1)
        for i in range(HOSTER_MAX_SUBS):
            await greedy.nc.subscribe(f"{inbox}.{i}")
        await greedy.nc.flush()
        assert not greedy.closed.is_set()
        await greedy.nc.subscribe(f"{inbox}.one-too-many")
        await asyncio.wait_for(greedy.closed.wait(), 5)
        assert "maximum subscriptions exceeded" in str(greedy.nc.last_error)
        # The other hoster subscribes its own subjects and hears what is published there.
        attempts = await collect(other.nc, subjects.attempt_start(H2))
        cancels = await collect(other.nc, subjects.attempt_cancel(H2))
        await platform.publish(subjects.attempt_start(H2), b"attempt")
        await platform.publish(subjects.attempt_cancel(H2), b"cancel")
        await platform.flush()
        await until(lambda: bool(attempts) and bool(cancels), "the other hoster's attempt and cancel")
        assert ([m.data for m in attempts], [m.data for m in cancels]) == ([b"attempt"], [b"cancel"])
        assert other.errors == []
        assert other.nc.is_connected
    finally:
        await greedy.nc.close()
        await other.nc.close()


@pytest.fixture
def roomy_nats_server(tmp_path: Path) -> Iterator[NatsTestServer]:
    """A nats-server whose own max_payload is past a hoster's: what refuses a hoster there is its own limit."""
    port = free_port()
    auth = AuthStore(tmp_path / "roomy-auth").init()
    process = start_nats(port, tmp_path / "roomy-js", auth, tmp_path / "roomy.log", max_payload="8MB")
    yield NatsTestServer(f"nats://127.0.0.1:{port}", auth, tmp_path / "roomy-creds", process)
    process.stop()


async def test_a_hoster_past_its_payload_limit_is_cut_off_and_another_is_not(
    roomy_nats_server: NatsTestServer, tmp_path: Path
) -> None:
    server = roomy_nats_server
    platform = await server.connect("platform")
    bulky = await connect_hoster(server, tmp_path, H1)
    other = await connect_hoster(server, tmp_path, H2)
    try:
        assert bulky.nc.max_payload > HOSTER_MAX_PAYLOAD  # the server's own limit lets it through
        got = await collect(platform, subjects.HOSTER_HEARTBEAT_ALL)
        await platform.publish(subjects.hoster_heartbeat(H1), b"p" * (2 * HOSTER_MAX_PAYLOAD))  # the platform may
        await platform.flush()
        await bulky.nc.publish(subjects.hoster_heartbeat(H1), b"h" * (HOSTER_MAX_PAYLOAD + 1))
        await asyncio.wait_for(bulky.closed.wait(), 5)
        assert "maximum payload violation" in str(bulky.nc.last_error)
        # The other hoster publishes a message at its limit, and stays connected.
        await other.nc.publish(subjects.hoster_heartbeat(H2), b"o" * HOSTER_MAX_PAYLOAD)
        await other.nc.flush()
        await until(lambda: len(got) >= 2, "the platform's and the other hoster's heartbeats")
        assert [(m.subject, len(m.data)) for m in got] == [
            (subjects.hoster_heartbeat(H1), 2 * HOSTER_MAX_PAYLOAD),
            (subjects.hoster_heartbeat(H2), HOSTER_MAX_PAYLOAD),
        ]
        assert other.errors == []
        assert other.nc.is_connected
    finally:
        await bulky.nc.close()
        await other.nc.close()
        await platform.close()
