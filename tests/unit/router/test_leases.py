"""The router's book of credit leases: what a lease admits, when it is given back, what a recall does."""

from __future__ import annotations

from libs.contracts.billing import LeasedAdmission
from services.router.leases import Lease, LeaseBook


def admission(request_id: str, amount: int) -> LeasedAdmission:
    return LeasedAdmission(request_id=request_id, key_id="k", amount=amount, fee_bps=1000)


def book_with(granted: int, now: float = 0.0) -> tuple[LeaseBook, Lease]:
    book = LeaseBook()
    lease = Lease("L1", "acct", granted, since=now, last_used=now)
    book.add(lease, now)
    return book, lease


def test_a_lease_admits_only_what_it_still_covers() -> None:
    book, lease = book_with(1000)
    assert book.admit("acct", admission("a", 600), 1.0) is lease
    assert book.admit("acct", admission("b", 500), 1.0) is None  # 400 left
    assert book.admit("other", admission("c", 1), 1.0) is None  # no lease on that account
    assert book.admit("acct", admission("d", 400), 1.0) is lease
    assert (lease.admitted, lease.running) == (1000, 2)
    batch, number = book.take_pending(lease)
    assert [a.request_id for a in batch] == ["a", "d"]
    assert number == 1
    assert lease.pending == []


def test_a_replaced_lease_is_given_back_once_its_requests_are_over() -> None:
    book, first = book_with(1000)
    book.admit("acct", admission("a", 900), 1.0)
    second = Lease("L2", "acct", 1000, since=2.0, last_used=2.0)
    book.add(second, 2.0)
    assert book.admit("acct", admission("b", 50), 2.0) is second  # the old one admits nothing more
    assert book.due(3.0, idle_s=60, stuck_s=3600) == []  # "a" still runs
    found = book.finished("a")
    assert found is not None
    assert found[0] is first
    assert book.due(3.0, idle_s=60, stuck_s=3600) == [first]
    assert book.held_ids() == ["L2"]
    assert book.finished("a") is None


def test_an_idle_lease_goes_back_and_a_stuck_one_after_the_longest_request() -> None:
    book, lease = book_with(1000)
    book.admit("acct", admission("a", 100), 1.0)
    assert book.due(10.0, idle_s=2, stuck_s=3600) == []  # a request runs: not idle
    book.finished("a")
    assert book.due(2.5, idle_s=2, stuck_s=3600) == []  # used at 1.0
    assert book.due(3.5, idle_s=2, stuck_s=3600) == [lease]
    assert book.admit("acct", admission("b", 1), 4.0) is None

    book, lease = book_with(1000)
    book.admit("acct", admission("a", 100), 1.0)
    book.add(Lease("L2", "acct", 1000, since=2.0, last_used=2.0), 2.0)
    assert [held.lease_id for held in book.due(100.0, idle_s=2, stuck_s=3600)] == ["L2"]  # idle, unlike L1
    assert book.due(3601.0, idle_s=2, stuck_s=3600) == []
    assert book.due(3602.0, idle_s=2, stuck_s=3600) == [lease]  # "a" never finished: given back anyway


def test_a_recalled_lease_admits_nothing_more_and_says_what_it_admitted() -> None:
    book, lease = book_with(1000)
    book.admit("acct", admission("a", 300), 1.0)
    assert book.recall("L1", 2.0) is lease
    assert lease.admitted == 300
    assert book.admit("acct", admission("b", 1), 2.0) is None
    assert book.recall("L1", 2.0) is None  # no longer held
    assert book.held_ids() == []


def test_after_a_refusal_billing_is_not_asked_again_for_a_while() -> None:
    book = LeaseBook()
    assert book.may_ask("acct", 0.0)
    book.refused("acct", until=5.0)
    assert not book.may_ask("acct", 4.9)
    assert book.may_ask("acct", 5.0)
