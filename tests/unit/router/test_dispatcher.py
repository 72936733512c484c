"""The dispatcher's lifecycle in memory (a recording bus, no NATS): a dispatch waits for nothing, a refusal
fails over, and the races a hostile review found between a hoster's report, the ingress's word and a failover
under way."""

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
        await asyncio.sleep(0)  # a publish lets others run, as a socket write may

    def control(self) -> list[bytes]:
        """The frame kinds published on the request's control subject (the router's word to the ingress)."""
        control = subjects.control_subject(ROUTE.reply_subject)
        return [data[:1] for subject, data in self.published if subject == control]

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


def refused(attempt: int) -> RequestCancelled:
    """The ingress's word that attempt ``attempt``'s adapter refused it (its one frame said so)."""
    return RequestCancelled(request_id="q1", reason="refused", attempt=attempt)


async def test_a_dispatch_waits_for_nothing_the_route_is_answered_once_it_is_sent() -> None:
    d, bus = dispatcher()
    accepted = await d.route(ROUTE)  # nothing answers the dispatch
    assert accepted.status == "accepted"
    assert bus.offers() == [(CHEAP, 1)]
    assert d._in_flight["q1"].current.adapters == frozenset({"a"})


async def test_a_refused_attempt_fails_over_and_is_no_attempt() -> None:
    d, bus = dispatcher()
    await d.route(ROUTE)
    await d.cancelled(refused(1))
    assert bus.offers() == [(CHEAP, 1), (FAST, 2)]
    assert bus.control() == [b"a"]  # the ingress hears who serves now
    await d.attempt_finished(report(2, FAST, "succeeded"))
    d.delivered(RequestDelivered(request_id="q1", attempt=2, text_bytes=10, choices=1, frames=1))
    assert "q1" not in d._in_flight
    assert [o.hoster_id for o in d._observed] == [FAST]  # the refusal is not held against CHEAP
    assert not any(s.startswith("adapter.attempt.cancel.") for s, _ in bus.published)


async def test_every_hoster_refusing_tells_the_client_they_are_busy() -> None:
    d, bus = dispatcher()
    await d.route(ROUTE)
    await d.cancelled(refused(1))
    await d.cancelled(refused(2))
    assert bus.offers() == [(CHEAP, 1), (FAST, 2)]
    control = subjects.control_subject(ROUTE.reply_subject)
    [error] = [orjson.loads(data.split(b"\n", 1)[1]) for s, data in bus.published if s == control and data[:1] == b"x"]
    assert (error["http_status"], error["code"], error["retry_after"]) == (503, "no_hoster_available", 5)
    d.delivered(RequestDelivered(request_id="q1", attempt=2, text_bytes=0, choices=1, frames=0))
    assert "q1" not in d._in_flight
    assert d._observed == []


async def test_a_refusal_after_the_hosters_report_or_of_another_attempt_changes_nothing() -> None:
    d, bus = dispatcher()
    await d.route(ROUTE)
    await d.cancelled(refused(2))  # not the serving attempt
    await d.attempt_finished(report(1, CHEAP, "succeeded"))
    await d.cancelled(refused(1))  # its hoster reported on it: it was taken
    assert bus.offers() == [(CHEAP, 1)]
    assert bus.control() == []


async def test_a_report_racing_the_ingresss_word_starts_one_failover_not_two() -> None:
    d, bus = dispatcher()
    assert (await d.route(ROUTE)).status == "accepted"
    # The ingress gives up on attempt 1; while the next hoster is being sent the request, attempt 1's
    # hoster reports the cancel it was sent.
    abandon = asyncio.create_task(
        d.cancelled(RequestCancelled(request_id="q1", reason="first_byte_timeout", attempt=1))
    )
    await bus.offered(FAST, 2)
    await d.attempt_finished(report(1, CHEAP, "cancelled"))
    await abandon
    assert bus.offers() == [(CHEAP, 1), (FAST, 2)]  # one failover
    control = subjects.control_subject(ROUTE.reply_subject)
    assert [data[:1] for subject, data in bus.published if subject == control] == [b"a"]  # its notice, no error
    flight = d._in_flight["q1"]
    assert [(r.hoster_id, r.attempt) for r in flight.runs] == [(CHEAP, 1), (FAST, 2)]


async def test_a_hoster_taking_a_failover_of_a_settled_request_is_told_to_stop() -> None:
    d, bus = dispatcher()
    await d.route(ROUTE)
    failing = asyncio.create_task(d.attempt_finished(report(1, CHEAP, "failed")))
    await bus.offered(FAST, 2)
    # The client's response ended meanwhile (nothing reached it): the request settles.
    d.delivered(RequestDelivered(request_id="q1", attempt=1, text_bytes=0, choices=1, frames=0))
    assert "q1" not in d._in_flight
    await failing
    assert "q1" not in d._in_flight  # not brought back to settle a second time
    assert (
        subjects.attempt_cancel(FAST),
        RequestCancelled(request_id="q1").model_dump_json().encode(),
    ) in bus.published
