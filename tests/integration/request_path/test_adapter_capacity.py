"""A hoster's capacity holds across the adapters that front it: two replicas of one adapter, one hoster of
capacity 3 whose upstream never answers, attempts offered the way routers offer them (to the hoster's queue
group, which spreads them over the replicas): exactly 3 are taken, whichever replica gets each offer. When a
replica goes, the other takes the whole capacity again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from libs.contracts import subjects
from libs.contracts.routing import AttemptAccepted, AttemptDispatch
from libs.devstack.processes import ManagedProcess, free_port
from libs.devstack.stack import DEMO_HOSTER_ID, demo_hoster
from libs.platform.broker import ensure_streams
from libs.platform.ids import new_request_id
from services.hoster_adapter.upstream import PEER_BEATS
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn

pytestmark = pytest.mark.integration

CAPACITY = 3
HEARTBEAT_S = 0.3


@pytest.fixture
async def replicas(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[tuple[Client, list[ManagedProcess]]]:
    """Two adapter replicas fronting one hung hoster of capacity ``CAPACITY``."""
    port = free_port()
    spawn("simulator", "simulator", {"CS_SIMULATOR_PORT": str(port), "CS_SIMULATOR_FAULT": "hang",
                                     "CS_SIMULATOR_FAULT_RATE": "1"}, port=port)  # fmt: skip
    hoster = {**demo_hoster(f"http://127.0.0.1:{port}/v1"), "capacity": CAPACITY}
    env = {
        "CS_ADAPTER_HOSTERS": json.dumps([hoster]),
        "CS_ADAPTER_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "CS_ADAPTER_FIRST_BYTE_TIMEOUT_S": "60",
        "CS_ADAPTER_SHUTDOWN_GRACE_S": "0",
    }
    processes = [
        spawn(name, "hoster_adapter", {**nats_server.env(name, "hoster_adapter"), **env}, "hoster_adapter ready")
        for name in ("adapter-a", "adapter-b")
    ]
    nc = await nats_server.connect("test-router")
    await ensure_streams(nc)
    yield nc, processes
    await nc.close()


async def offer(nc: Client, count: int) -> list[AttemptAccepted]:
    """Offer ``count`` attempts to the hoster at once, as routers do; every answer."""
    answers = await nc.subscribe(subjects.attempt_accepted(DEMO_HOSTER_ID, "test-router"))
    for _ in range(count):
        request_id = new_request_id()
        dispatch = AttemptDispatch(
            request_id=request_id, attempt=1, router_id="test-router",
            reply_subject=subjects.reply_subject("test-ingress", request_id), hoster_id=DEMO_HOSTER_ID,
            model="demo-model", upstream_model="demo-model", stream=True, include_usage=False,
            created=int(time.time()), input_price=1, output_price=1, max_tokens=16,
            body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )  # fmt: skip
        await nc.publish(subjects.attempt_start(DEMO_HOSTER_ID), dispatch.model_dump_json().encode(),
                         reply=dispatch.reply_subject)  # fmt: skip
    out = [AttemptAccepted.model_validate_json((await answers.next_msg(timeout=5)).data) for _ in range(count)]
    await answers.unsubscribe()
    return out


async def test_two_replicas_take_no_more_than_the_hosters_capacity(
    replicas: tuple[Client, list[ManagedProcess]],
) -> None:
    nc, processes = replicas
    await asyncio.sleep(3 * HEARTBEAT_S)  # both replicas heard each other (they answer a newcomer at once)
    # Enough offers that the queue group hands each replica more than its share (12 left one short 1 run in ~25).
    answers = await offer(nc, 10 * CAPACITY)
    taken = [a for a in answers if a.accepted]
    assert len(taken) == CAPACITY, answers
    # The offers reached both replicas, and both refused once at their share: the limit is not one
    # replica's alone.
    refusals = {a.adapter_id for a in answers if not a.accepted}
    assert len(refusals) == 2, answers
    assert {a.reason for a in answers if not a.accepted} == {"hoster at capacity"}

    # One replica goes away (its attempts with it): once its heartbeats stop counting, the other one may use
    # the whole capacity, less what it holds already.
    await asyncio.to_thread(processes[0].stop)
    await asyncio.sleep(PEER_BEATS * HEARTBEAT_S + 0.5)
    answers = await offer(nc, 2 * CAPACITY)
    (remaining,) = {a.adapter_id for a in answers}
    held = sum(1 for a in taken if a.adapter_id == remaining)
    assert sum(a.accepted for a in answers) == CAPACITY - held, answers
