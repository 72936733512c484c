"""A hoster's capacity holds across the adapters that front it: two replicas of one adapter, one hoster of
capacity 3 whose upstream never answers, attempts offered the way routers offer them (to the hoster's queue
group, which spreads them over the replicas): exactly 3 are taken, whichever replica gets each offer. When a
replica goes, the other takes the whole capacity again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import frames, subjects
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import AttemptDispatch
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


class Hoster:
    """What the test hears of the hoster: its adapters' heartbeats (the latest of each) and the refusals of
    the attempts offered to it (each offer's one frame when refused; a taken attempt sends nothing yet, its
    upstream never answers)."""

    def __init__(self) -> None:
        self.beats: dict[str, HosterHeartbeat] = {}
        self.refusals: list[dict[str, str]] = []
        self._changed = asyncio.Condition()

    async def listen(self, nc: Client) -> None:
        await nc.subscribe(subjects.hoster_heartbeat(DEMO_HOSTER_ID), cb=self._beat)
        await nc.subscribe(subjects.reply_subject("test-ingress", "*") + ".>", cb=self._frame)

    async def _beat(self, msg: Msg) -> None:
        beat = HosterHeartbeat.model_validate_json(msg.data)
        async with self._changed:
            self.beats[beat.adapter_id] = beat
            self._changed.notify_all()

    async def _frame(self, msg: Msg) -> None:
        frame = frames.decode(msg.data)
        if frame.kind == frames.REFUSED:
            async with self._changed:
                self.refusals.append(orjson.loads(frame.body))
                self._changed.notify_all()

    async def until(self, condition: Callable[[], bool], timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(condition)

    def in_flight(self, adapters: set[str] | None = None) -> int:
        """The attempts the adapters (all, or ``adapters``) say they run, by their latest heartbeats."""
        return sum(b.hosters[0].in_flight for a, b in self.beats.items() if adapters is None or a in adapters)


async def offer(nc: Client, count: int) -> None:
    """Offer ``count`` attempts to the hoster at once, as routers do."""
    for _ in range(count):
        request_id = new_request_id()
        reply = subjects.offer_subject(subjects.reply_subject("test-ingress", request_id), 1, "t")
        dispatch = AttemptDispatch(
            request_id=request_id, attempt=1, router_id="test-router",
            reply_subject=reply, hoster_id=DEMO_HOSTER_ID,
            model="demo-model", upstream_model="demo-model", stream=True, include_usage=False,
            created=int(time.time()), input_price=1, output_price=1, max_tokens=16,
            body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )  # fmt: skip
        await nc.publish(subjects.attempt_start(DEMO_HOSTER_ID), dispatch.model_dump_json().encode(),
                         reply=dispatch.reply_subject)  # fmt: skip


async def test_two_replicas_take_no_more_than_the_hosters_capacity(
    replicas: tuple[Client, list[ManagedProcess]],
) -> None:
    nc, processes = replicas
    hoster = Hoster()
    await hoster.listen(nc)
    # Both replicas heartbeat (each answers a newcomer's first heartbeat at once, so each heard the other).
    await hoster.until(lambda: len(hoster.beats) == 2)
    # Enough offers that the queue group hands each replica more than its share (12 left one short 1 run in ~25).
    count = 10 * CAPACITY
    await offer(nc, count)
    await hoster.until(lambda: len(hoster.refusals) == count - CAPACITY)
    await hoster.until(lambda: hoster.in_flight() == CAPACITY)  # exactly the capacity taken
    # The offers reached both replicas, and both refused once at their share: the limit is not one
    # replica's alone.
    assert len({r["adapter_id"] for r in hoster.refusals}) == 2, hoster.refusals
    assert {r["reason"] for r in hoster.refusals} == {"hoster at capacity"}

    # One replica goes away (its attempts with it): once its heartbeats stop counting (PEER_BEATS missed
    # beats, on the remaining replica's clock), the other one may use the whole capacity, less what it holds.
    await asyncio.to_thread(processes[0].stop)
    hoster.beats.clear()  # only the replica left beats from here on
    await asyncio.sleep(PEER_BEATS * HEARTBEAT_S + 0.5)
    (survivor,) = hoster.beats
    held = hoster.in_flight({survivor})
    hoster.refusals.clear()
    await offer(nc, 2 * CAPACITY)
    await hoster.until(lambda: len(hoster.refusals) == 2 * CAPACITY - (CAPACITY - held))
    await hoster.until(lambda: hoster.in_flight({survivor}) == CAPACITY)
    assert {r["adapter_id"] for r in hoster.refusals} == {survivor}
