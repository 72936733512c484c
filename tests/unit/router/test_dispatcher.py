"""The dispatcher's lifecycle in memory (a recording bus, no NATS): the races a hostile review found between a
hoster's report, the ingress's word and a failover under way."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import orjson

from libs.contracts import subjects
from libs.contracts.common import Usage
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptFinished,
    RequestCancelled,
    RequestDelivered,
    RouteRequest,
    RoutingPreferences,
)
from services.router.dispatcher import Dispatcher
from services.router.settings import RouterSettings
from tests.unit.router.test_marketplace import CHEAP, FAST, hoster


class Bus:
    """Records what the dispatcher publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()

    async def publish(self, subject: str, data: bytes, **_: Any) -> None:
        self.published.append((subject, data))
        async with self._changed:
            self._changed.notify_all()

    async def offered(self, hoster_id: str, attempt: int) -> None:
        """Once the offer of ``attempt`` to ``hoster_id`` was published."""
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: (hoster_id, attempt) in self.offers())

    def offers(self) -> list[tuple[str, int]]:
        return [
            (subject.rsplit(".", 1)[1], orjson.loads(data)["attempt"])
            for subject, data in self.published
            if subject.startswith("adapter.attempt.start.")
        ]


def dispatcher() -> tuple[Dispatcher, Bus]:
    bus = Bus()
    broker = SimpleNamespace(connection=bus)
    d = Dispatcher(RouterSettings(), "r1", broker, logging.getLogger("test"))  # type: ignore[arg-type]
    beat = HosterHeartbeat(adapter_id="a", interval_s=1, hosters=[hoster(CHEAP, 1), hoster(FAST, 2)])
    d.registry.observe(beat, time.monotonic(), int(time.time()))
    return d, bus


ROUTE = RouteRequest(
    request_id="q1", reply_subject="ingress.reply.i.q1", model="m", stream=False, include_usage=False, created=0,
    routing=RoutingPreferences.model_validate({"tier": "cheapest"}), body={"model": "m", "messages": []},
)  # fmt: skip


def report(attempt: int, hoster_id: str, outcome: str) -> AttemptFinished:
    return AttemptFinished(
        request_id="q1", attempt=attempt, router_id="r1", hoster_id=hoster_id, adapter_id="a", model="m",
        stream=False, outcome=outcome, usage=Usage(), chunks_sent=0, input_price=1, output_price=1,
        duration_ms=1.0, finished_at=1.0,
    )  # fmt: skip


async def accept(d: Dispatcher, bus: Bus, attempt: int, hoster_id: str) -> None:
    """Answer the offer of ``attempt`` once it was published."""
    await bus.offered(hoster_id, attempt)
    d.offer_answered(hoster_id, AttemptAccepted(request_id="q1", attempt=attempt, accepted=True, adapter_id="a"))


async def test_a_report_racing_the_ingresss_word_starts_one_failover_not_two() -> None:
    d, bus = dispatcher()
    routing = asyncio.create_task(d.route(ROUTE))
    await accept(d, bus, 1, CHEAP)
    assert (await routing).status == "accepted"
    # The ingress gives up on attempt 1; while the next hoster is being offered the request, attempt 1's
    # hoster reports the cancel it was sent.
    abandon = asyncio.create_task(
        d.cancelled(RequestCancelled(request_id="q1", reason="first_byte_timeout", attempt=1))
    )
    await bus.offered(FAST, 2)
    await d.attempt_finished(report(1, CHEAP, "cancelled"))
    await accept(d, bus, 2, FAST)
    await abandon
    assert bus.offers() == [(CHEAP, 1), (FAST, 2)]  # one failover
    control = subjects.control_subject(ROUTE.reply_subject)
    assert [data[:1] for subject, data in bus.published if subject == control] == [b"a"]  # its notice, no error
    flight = d._in_flight["q1"]
    assert [(r.hoster_id, r.attempt) for r in flight.runs] == [(CHEAP, 1), (FAST, 2)]


async def test_a_hoster_taking_a_failover_of_a_settled_request_is_told_to_stop() -> None:
    d, bus = dispatcher()
    routing = asyncio.create_task(d.route(ROUTE))
    await accept(d, bus, 1, CHEAP)
    await routing
    failing = asyncio.create_task(d.attempt_finished(report(1, CHEAP, "failed")))
    await bus.offered(FAST, 2)
    # The client's response ended meanwhile (nothing reached it): the request settles.
    d.delivered(RequestDelivered(request_id="q1", attempt=1, text_bytes=0, choices=1, frames=0))
    assert "q1" not in d._in_flight
    await accept(d, bus, 2, FAST)
    await failing
    assert "q1" not in d._in_flight  # not brought back to settle a second time
    assert (
        subjects.attempt_cancel(FAST),
        RequestCancelled(request_id="q1").model_dump_json().encode(),
    ) in bus.published
