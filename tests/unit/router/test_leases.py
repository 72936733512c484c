"""The router's book of credit leases: what a lease admits, when it is given back, what a recall does."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from libs.contracts.billing import Caller, LeasedAdmission, LeaseReturned, RecallLease
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import RouteRequest, RoutingPreferences
from libs.contracts.subjects import LEASE_ADMITTED, LEASE_RETURNED
from services.router.dispatcher import Dispatcher
from services.router.leases import RECALLED_KEPT_S, Lease, LeaseBook
from services.router.settings import RouterSettings
from tests.unit.router.test_marketplace import CHEAP, hoster


def admission(request_id: str, amount: int) -> LeasedAdmission:
    return LeasedAdmission(request_id=request_id, key_id="k", amount=amount, fee_bps=1000)


def book_with(granted: int, now: float = 0.0) -> tuple[LeaseBook, Lease]:
    book = LeaseBook()
    lease = Lease("L1", "acct", granted, last_used=now)
    book.add(lease, now)
    return book, lease


def test_a_lease_admits_only_what_it_still_covers() -> None:
    book, lease = book_with(1000)
    assert book.admit("acct", admission("a", 600), 1.0, 0.0) is lease
    assert book.admit("acct", admission("b", 500), 1.0, 0.0) is None  # 400 left
    assert book.admit("other", admission("c", 1), 1.0, 0.0) is None  # no lease on that account
    assert book.admit("acct", admission("d", 400), 1.0, 0.0) is lease
    assert (lease.admitted, lease.running) == (1000, 2)
    batch, number = book.take_pending(lease)
    assert [a.request_id for a in batch] == ["a", "d"]
    assert number == 1
    assert lease.pending == []


def test_a_replaced_lease_is_given_back_once_its_requests_are_over() -> None:
    book, first = book_with(1000)
    book.admit("acct", admission("a", 900), 1.0, 0.0)
    second = Lease("L2", "acct", 1000, last_used=2.0)
    book.add(second, 2.0)
    assert book.admit("acct", admission("b", 50), 2.0, 0.0) is second  # the old one admits nothing more
    assert book.due(3.0, idle_s=60, stuck_s=3600, wall=0.0) == []  # "a" still runs
    found = book.finished("a")
    assert found is not None
    assert found[0] is first
    assert book.due(3.0, idle_s=60, stuck_s=3600, wall=0.0) == [first]
    assert book.held_ids() == ["L2"]
    assert book.finished("a") is None


def test_an_idle_lease_goes_back_and_a_stuck_one_after_the_longest_request() -> None:
    book, lease = book_with(1000)
    book.admit("acct", admission("a", 100), 1.0, 0.0)
    assert book.due(10.0, idle_s=2, stuck_s=3600, wall=0.0) == []  # a request runs: not idle
    book.finished("a")
    assert book.due(2.5, idle_s=2, stuck_s=3600, wall=0.0) == []  # used at 1.0
    assert book.due(3.5, idle_s=2, stuck_s=3600, wall=0.0) == [lease]
    assert book.admit("acct", admission("b", 1), 4.0, 0.0) is None

    book, lease = book_with(1000)
    book.admit("acct", admission("a", 100), 1.0, 0.0)
    book.add(Lease("L2", "acct", 1000, last_used=2.0), 2.0)
    assert [held.lease_id for held in book.due(100.0, idle_s=2, stuck_s=3600, wall=0.0)] == ["L2"]  # idle, unlike L1
    assert book.due(3601.0, idle_s=2, stuck_s=3600, wall=0.0) == []
    assert book.due(3602.0, idle_s=2, stuck_s=3600, wall=0.0) == [lease]  # "a" never finished: given back anyway


def test_a_recalled_lease_admits_nothing_more_and_says_what_it_admitted() -> None:
    book, lease = book_with(1000)
    book.admit("acct", admission("a", 300), 1.0, 0.0)
    assert book.recall("L1", 2.0, retry_s=5) == (lease, 300)
    assert book.admit("acct", admission("b", 1), 2.0, 0.0) is None
    assert book.held_ids() == []
    # Recalled again (two refusals at once): answered alike, for a while; a lease never held: None.
    assert book.recall("L1", 3.0, retry_s=5) == (None, 300)
    assert book.recall("L1", 3.0 + RECALLED_KEPT_S + 1, retry_s=5) == (None, None)
    assert book.recall("L9", 3.0, retry_s=5) == (None, None)
    # Its account's credit is short: no new lease asked for a while.
    assert not book.may_ask("acct", 6.0)
    assert book.may_ask("acct", 7.0)


def test_a_lease_admits_nothing_past_its_until_and_is_then_given_back() -> None:
    book = LeaseBook()
    lease = Lease("L1", "acct", 1000, last_used=0.0, until=1000.0)
    book.add(lease, 0.0)
    assert book.admit("acct", admission("a", 1), 1.0, wall=999.0) is lease
    assert book.admit("acct", admission("b", 1), 1.0, wall=1000.0) is None
    assert book.due(1.5, idle_s=60, stuck_s=3600, wall=1000.0) == []  # "a" runs
    book.finished("a")
    assert book.due(1.6, idle_s=60, stuck_s=3600, wall=1000.0) == [lease]


def test_after_a_refusal_billing_is_not_asked_again_for_a_while() -> None:
    book = LeaseBook()
    assert book.may_ask("acct", 0.0)
    book.refused("acct", until=5.0)
    assert not book.may_ask("acct", 4.9)
    assert book.may_ask("acct", 5.0)


class FakeJetStream:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, **_: object) -> None:
        self.published.append((subject, data))


async def test_a_recalled_lease_is_given_back_durably_too() -> None:
    """Billing's recall is a request with a short timeout: should the answer be lost, the lease must still
    come back (with what it admitted), not wait for billing's sweep."""
    js = FakeJetStream()
    broker = SimpleNamespace(connection=SimpleNamespace(jetstream=lambda: js))
    dispatcher = Dispatcher(RouterSettings(), "r1", broker, logging.getLogger("test"))  # type: ignore[arg-type]
    dispatcher._leases.add(Lease("L1", "acct", 1000, last_used=0.0), 0.0)
    dispatcher._leases.admit("acct", admission("a", 100), 0.0, 0.0)
    assert dispatcher.recall_lease(RecallLease(lease_id="L1")).admitted == 100
    await dispatcher.drain()
    returned = [LeaseReturned.model_validate_json(data) for subject, data in js.published if subject == LEASE_RETURNED]
    assert [(r.lease_id, r.account_id, r.admitted) for r in returned] == [("L1", "acct", 100)]
    admitted = [data for subject, data in js.published if subject == LEASE_ADMITTED]
    assert len(admitted) == 1  # its pending admission went first


async def test_a_request_whose_start_fails_does_not_keep_its_lease() -> None:
    """An error while starting an admitted request's first attempt: the lease stops counting it as running
    (else it would stay held, not given back, for the router's in-flight maximum)."""
    js = FakeJetStream()
    broker = SimpleNamespace(connection=SimpleNamespace(jetstream=lambda: js))
    dispatcher = Dispatcher(RouterSettings(), "r1", broker, logging.getLogger("test"))  # type: ignore[arg-type]
    lease = Lease("L1", "acct", 1000, last_used=0.0)
    dispatcher._leases.add(lease, 0.0)

    async def admitted(request: object, amount: int) -> bool:
        dispatcher._leases.admit("acct", admission("q1", 100), 0.0, 0.0)
        return True

    async def broken_start(*_: object, **__: object) -> None:
        raise RuntimeError("NATS went away")

    dispatcher._admit_leased = admitted  # type: ignore[method-assign]
    dispatcher._start = broken_start  # type: ignore[method-assign]
    heartbeat = HosterHeartbeat(adapter_id="a", interval_s=1, hosters=[hoster(CHEAP, 1)])
    dispatcher.registry.observe(heartbeat, time.monotonic(), int(time.time()))
    caller = Caller(account_id="acct", key_id="k")
    route = RouteRequest(
        request_id="q1", reply_subject="ingress.reply.i.q1", model="m", stream=False, include_usage=False,
        created=0, routing=RoutingPreferences(), body={"model": "m", "messages": []}, caller=caller,
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        await dispatcher.route(route)
    assert lease.running == 0
