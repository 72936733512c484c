"""The JetStream streams as ``ensure_streams`` makes them on a real nats-server: capped, never dropping an
event to make room, and with no hoster's subject in them (hosters write to no stream)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from libs.contracts import subjects
from libs.platform.broker import (
    DEADLETTER_MAX_AGE_S,
    DEADLETTER_MAX_BYTES,
    EVENT_MAX_BYTES,
    USAGE_MAX_BYTES,
    ensure_streams,
)
from tests.conftest import NatsTestServer

pytestmark = pytest.mark.integration


async def test_the_streams_are_capped_as_stated(nats_server: NatsTestServer) -> None:
    nc = await nats_server.connect("billing")
    try:
        js = nc.jetstream()
        # A stream as an earlier billing made it is updated in place.
        await js.add_stream(
            StreamConfig(name=subjects.USAGE_STREAM, retention=RetentionPolicy.LIMITS, max_age=7 * 24 * 3600,
                         subjects=[subjects.ATTEMPT_FINISHED_ALL, subjects.REQUEST_FINISHED,
                                   subjects.LEASE_EVENTS_ALL])
        )  # fmt: skip
        await ensure_streams(nc)
        await ensure_streams(nc)  # every replica calls it: a second time changes nothing
        usage = (await js.stream_info(subjects.USAGE_STREAM)).config
        assert sorted(usage.subjects or []) == sorted([subjects.REQUEST_FINISHED, subjects.LEASE_EVENTS_ALL])
        assert (usage.retention, usage.discard, usage.storage) == (
            RetentionPolicy.INTEREST, DiscardPolicy.NEW, StorageType.FILE
        )  # fmt: skip
        assert (usage.max_bytes, usage.max_msg_size, usage.max_age) == (USAGE_MAX_BYTES, EVENT_MAX_BYTES, 0)
        assert usage.max_msgs_per_subject == -1
        assert usage.duplicate_window == 120
        dead = (await js.stream_info(subjects.DEADLETTER_STREAM)).config
        assert dead.subjects == [subjects.DEADLETTER_ALL]
        assert (dead.retention, dead.discard) == (RetentionPolicy.LIMITS, DiscardPolicy.NEW)
        assert (dead.max_bytes, dead.max_msg_size, dead.max_age) == (
            DEADLETTER_MAX_BYTES, EVENT_MAX_BYTES, DEADLETTER_MAX_AGE_S
        )  # fmt: skip
    finally:
        await nc.close()


async def test_a_usage_event_stays_until_its_consumer_acked_it(nats_server: NatsTestServer) -> None:
    nc = await nats_server.connect("billing")
    try:
        await ensure_streams(nc)
        js = nc.jetstream()
        received: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            await received.put(msg)

        await js.subscribe(subjects.REQUEST_FINISHED, durable=subjects.BILLING_REQUESTS_DURABLE,
                           queue=subjects.BILLING_REQUESTS_DURABLE, stream=subjects.USAGE_STREAM, cb=on_event,
                           manual_ack=True)  # fmt: skip
        await js.publish(subjects.REQUEST_FINISHED, b"settle", headers={"Nats-Msg-Id": "r1"})
        event = await asyncio.wait_for(received.get(), 5)
        assert (await js.stream_info(subjects.USAGE_STREAM)).state.messages == 1  # read, not yet acked
        await event.ack_sync()
        assert (await js.stream_info(subjects.USAGE_STREAM)).state.messages == 0
    finally:
        await nc.close()
