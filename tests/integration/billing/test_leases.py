"""Credit leases against a real PostgreSQL: what a lease may hold, how its requests are recorded and settled
(in either order, once), what goes back when it is returned, recalled or swept, and that the books balance."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from nats.aio.msg import Msg
from pydantic import TypeAdapter

from libs.contracts import subjects
from libs.contracts.billing import (
    Admission,
    Caller,
    LeaseCredits,
    LeasedAdmission,
    LeasedAdmissions,
    LeaseGranted,
    LeaseRecalled,
    LeaseRefused,
    LeaseReturned,
    RecallLease,
    Refused,
    RequestFinished,
    ReserveCredits,
    Reserved,
)
from services.billing import leases
from services.billing.ledger import Ledger, Unbacked
from tests.conftest import NatsTestServer
from tests.integration.billing.test_ledger import HOSTER, caller_with, done
from tests.integration.conftest import Spawn

pytestmark = pytest.mark.integration

SHARE = 8


def asked(caller: Caller, amount: int, minimum: int = 1, lease_id: str | None = None) -> LeaseCredits:
    return LeaseCredits(
        lease_id=lease_id or str(uuid.uuid4()),
        account_id=caller.account_id,
        router_id="r1",
        amount=amount,
        minimum=minimum,
    )


async def granted(ledger: Ledger, caller: Caller, amount: int, minimum: int = 1) -> LeaseGranted:
    answer = await ledger.lease(asked(caller, amount, minimum), SHARE)
    assert isinstance(answer, LeaseGranted)
    return answer


def returned(caller: Caller, lease_id: str, admitted: int) -> LeaseReturned:
    return LeaseReturned(lease_id=lease_id, account_id=caller.account_id, admitted=admitted)


async def no_router(lease_id: str, router_id: str) -> None:
    """A recall nobody answers."""


async def sweep(ledger: Ledger, ttl_s: float) -> int:
    """Billing's lease sweep with no router answering its recalls: how many leases it took back."""
    return (await ledger.expire_stale_leases(ttl_s, no_router))[0]


def admitted(caller: Caller, request_id: str, amount: int) -> LeasedAdmission:
    return LeasedAdmission(request_id=request_id, key_id=caller.key_id, amount=amount, fee_bps=1000)


def leased_done(caller: Caller, lease_id: str, request_id: str, amount: int, tokens: int) -> RequestFinished:
    event = done(caller, request_id, tokens, tokens)
    return event.model_copy(update={"leased": admitted(caller, request_id, amount), "lease_id": lease_id})


async def raw(ledger: Ledger, account_id: str) -> tuple[int, int, int]:
    row = await ledger.pool.fetchrow("SELECT balance, reserved, day_spend FROM accounts WHERE id = $1", account_id)
    assert row is not None
    return row["balance"], row["reserved"], row["day_spend"]


async def test_a_lease_is_at_most_a_share_of_what_the_account_may_spend(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=5000)
    assert lease.amount == 1000  # 8000 / 8
    assert await raw(ledger, caller.account_id) == (7000, 1000, 1000)
    # Shown as the account's to spend (a request is admitted against it wherever it arrives), not as held.
    state = await ledger.account(caller.account_id)
    assert (state.balance, state.reserved, state.spent_today) == (8000, 0, 0)
    # Less than the minimum asked is no lease.
    small = await caller_with(ledger, credits=70)
    refused = await ledger.lease(asked(small, 100, 10), SHARE)
    assert isinstance(refused, LeaseRefused)
    assert await raw(ledger, small.account_id) == (70, 0, 0)
    # The daily cap bounds it too.
    capped = await caller_with(ledger, credits=8000)
    await ledger.set_daily_cap(capped.account_id, 800)
    assert (await granted(ledger, capped, amount=5000)).amount == 100
    assert await ledger.check() == []


async def test_requests_recorded_in_batches_then_settled_are_charged_once_and_the_rest_returns(
    ledger: Ledger,
) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    batch = [admitted(caller, f"q{i}", 300) for i in range(3)]
    await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=batch))
    await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=batch))  # redelivered
    assert await ledger.open_reservations() == 3
    for i in range(3):  # 100 prompt + 100 completion tokens at 1 per token: 200 to the hoster, 20 fee
        assert await ledger.settle(leased_done(caller, lease.lease_id, f"q{i}", 300, 100)) is True
    assert await ledger.settle(leased_done(caller, lease.lease_id, "q0", 300, 100)) is False
    # 900 of the lease were admitted; 100 come back with the lease, and each request's unused 80.
    assert await ledger.return_lease(returned(caller, lease.lease_id, 900)) == 100
    assert await ledger.return_lease(returned(caller, lease.lease_id, 900)) == 0
    assert await raw(ledger, caller.account_id) == (8000 - 660, 0, 660)
    assert await ledger.hoster_earnings(HOSTER) == [{"hoster_id": HOSTER, "earned": 600, "entries": 3}]
    assert await ledger.check() == []


async def test_a_settlement_before_its_batch_records_the_reservation_itself(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    # Returned first (the router's word: 600 admitted), then the settlement, then the batch: each once.
    assert await ledger.return_lease(returned(caller, lease.lease_id, 600)) == 400
    assert (
        await ledger.settle_many(
            [leased_done(caller, lease.lease_id, "a", 300, 100), leased_done(caller, lease.lease_id, "b", 300, 50)]
        )
        == 2
    )
    await ledger.record_leased(
        LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, "a", 300), admitted(caller, "b", 300)])
    )
    assert await ledger.open_reservations() == 0
    assert await raw(ledger, caller.account_id) == (8000 - 220 - 110, 0, 330)
    assert await ledger.check() == []


async def test_more_than_the_lease_holds_is_refused_and_leaves_nothing(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    # The lease cannot hold 1200: each reservation comes from the balance instead (it still covers them).
    await ledger.record_leased(
        LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, f"x{i}", 400) for i in range(3)])
    )
    assert await raw(ledger, caller.account_id) == (7000 - 1200, 2200, 2200)
    assert await ledger.check() == []
    # Neither the lease nor the balance: refused, nothing written (the event is retried, then dead-lettered).
    poor = await caller_with(ledger, credits=800)
    small = await granted(ledger, poor, amount=100)
    with pytest.raises(Unbacked):
        await ledger.record_leased(
            LeasedAdmissions(lease_id=small.lease_id, admissions=[admitted(poor, "too-much", 5000)])
        )
    assert await raw(ledger, poor.account_id) == (700, 100, 100)
    assert await ledger.check() == []


async def test_a_stale_lease_is_taken_back_and_its_recorded_requests_stay_held(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, "s", 300)]))
    await ledger.touch([], [lease.lease_id])
    assert await sweep(ledger, 60) == 0
    await ledger.pool.execute("UPDATE leases SET touched_at = now() - interval '2 minutes'")
    assert await sweep(ledger, 60) == 1
    assert await raw(ledger, caller.account_id) == (7700, 300, 300)  # the recorded request stays held
    # Its settlement still finds its reservation; a request the router admitted but never told of comes from
    # the balance.
    assert await ledger.settle(leased_done(caller, lease.lease_id, "s", 300, 100)) is True
    assert await ledger.settle(leased_done(caller, lease.lease_id, "late", 300, 100)) is True
    assert await raw(ledger, caller.account_id) == (8000 - 440, 0, 440)
    assert await ledger.check() == []


async def test_concurrent_batches_and_settlements_of_the_same_requests_record_each_once(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=80_000)
    lease = await granted(ledger, caller, amount=10_000)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    batches = [
        ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, i, 500)]))
        for i in ids
    ]
    settlements = [ledger.settle(leased_done(caller, lease.lease_id, i, 500, 100)) for i in ids]
    outcomes = await asyncio.gather(*batches, *settlements, return_exceptions=True)
    # Every one of them went through at once, each request settled by its own settlement.
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert outcomes[len(ids) :] == [True] * len(ids)
    # Delivered again, they change nothing.
    for i in ids:
        await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, i, 500)]))
        assert await ledger.settle(leased_done(caller, lease.lease_id, i, 500, 100)) is False
    attached = await ledger.pool.fetchval("SELECT attached FROM leases WHERE lease_id = $1", uuid.UUID(lease.lease_id))
    assert attached == 20 * 500
    assert await ledger.return_lease(returned(caller, lease.lease_id, 10_000)) == 0
    assert await raw(ledger, caller.account_id) == (80_000 - 20 * 220, 0, 20 * 220)
    assert await ledger.check() == []


async def test_a_lease_admits_nothing_past_its_day_and_the_sweep_takes_back_yesterdays(ledger: Ledger) -> None:
    """A lease counts in the UTC day it was granted: it ends a minute before that day does (its router stops
    admitting against it), none is granted in that last minute, and one still open the next day is taken
    back, so a request of the next day always counts in the next day's cap."""
    caller = await caller_with(ledger, credits=80_000)
    today = dt.datetime.now(dt.UTC).date()
    noon = dt.datetime.combine(today, dt.time(12), tzinfo=dt.UTC)
    async with ledger.pool.acquire() as conn, conn.transaction():
        lease = await leases.grant(conn, asked(caller, 1000), SHARE, noon)
        late = await leases.grant(conn, asked(caller, 1000), SHARE, noon.replace(hour=23, minute=59, second=30))
    assert isinstance(lease, LeaseGranted)
    assert lease.until == dt.datetime.combine(today, dt.time(23, 59), tzinfo=dt.UTC).timestamp()
    assert isinstance(late, LeaseRefused)
    yesterday = today - dt.timedelta(days=1)
    async with ledger.pool.acquire() as conn, conn.transaction():
        old = await leases.grant(
            conn, asked(caller, 1000), SHARE, dt.datetime.combine(yesterday, dt.time(12), tzinfo=dt.UTC)
        )
    assert isinstance(old, LeaseGranted)
    recalled: list[str] = []

    async def recall(lease_id: str, router_id: str) -> None:
        recalled.append(lease_id)

    if dt.datetime.now(dt.UTC).time() >= dt.time(0, 3):  # the sweep waits two minutes past midnight
        assert await ledger.expire_stale_leases(3600, recall) == (1, 0)
        assert recalled == [old.lease_id]
    assert await ledger.check() == []


async def test_a_given_back_lease_keeps_what_its_router_admitted_only_for_a_while(ledger: Ledger) -> None:
    """Given back saying 600 were admitted, but neither their batch nor their settlements ever come (lost
    with their router): after the lease TTL the 600 go back too, and nothing stays held for ever."""
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    assert await ledger.return_lease(returned(caller, lease.lease_id, 600)) == 400
    assert await ledger.release_stranded_leases(60) == 0
    await ledger.pool.execute("UPDATE leases SET touched_at = now() - interval '2 minutes'")
    assert await ledger.release_stranded_leases(60) == 600
    assert await raw(ledger, caller.account_id) == (8000, 0, 0)
    # An admission arriving after that comes from the balance.
    await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, "l", 300)]))
    assert await raw(ledger, caller.account_id) == (7700, 300, 300)
    assert await ledger.check() == []


async def test_a_lease_given_back_before_its_grant_arrives_is_never_granted(ledger: Ledger) -> None:
    """The router's request for a lease timed out, so it gave the lease back (admitted nothing); billing's
    grant, still on the way, then finds it given back and moves no money."""
    caller = await caller_with(ledger, credits=8000)
    lease_id = str(uuid.uuid4())
    assert await ledger.return_lease(returned(caller, lease_id, 0)) == 0
    assert isinstance(await ledger.lease(asked(caller, 1000, lease_id=lease_id), SHARE), LeaseRefused)
    assert await raw(ledger, caller.account_id) == (8000, 0, 0)
    # The same id granted twice (a retried request) holds once.
    again = str(uuid.uuid4())
    assert isinstance(await ledger.lease(asked(caller, 1000, lease_id=again), SHARE), LeaseGranted)
    assert isinstance(await ledger.lease(asked(caller, 1000, lease_id=again), SHARE), LeaseRefused)
    assert await raw(ledger, caller.account_id) == (7000, 1000, 1000)
    assert await ledger.check() == []


_ADMISSION: TypeAdapter[Reserved | Refused] = TypeAdapter(Admission)


async def test_refusals_at_once_each_recall_and_each_retries(
    nats_server: NatsTestServer, database_url: str, spawn: Spawn, ledger: Ledger
) -> None:
    """Credit for 16 requests of 100, 200 of it in a router's lease: 16 requests reach a real billing at once;
    the two refused for credit both recall the lease (the router answers the second alike, so it waits for the
    first's take-back); both try again, and all 16 are admitted."""
    caller = await caller_with(ledger, credits=1600)
    lease = await ledger.lease(asked(caller, 1000, 100), SHARE)
    assert isinstance(lease, LeaseGranted)
    assert lease.amount == 200
    env = {**nats_server.env("billing", "billing"), "CS_BILLING_DATABASE_URL": database_url}
    spawn("billing", "billing", env, marker="billing ready")
    nc = await nats_server.connect()
    held, recalled = {lease.lease_id}, set[str]()

    async def router_recall(msg: Msg) -> None:  # as the router's LeaseBook.recall answers
        recall = RecallLease.model_validate_json(msg.data)
        known = recall.lease_id in held or recall.lease_id in recalled
        held.discard(recall.lease_id)
        recalled.add(recall.lease_id)
        answer = LeaseRecalled(lease_id=recall.lease_id, admitted=0 if known else None)
        await msg.respond(answer.model_dump_json().encode())

    await nc.subscribe(subjects.lease_recall("r1"), cb=router_recall)
    try:

        async def ask(i: int) -> Reserved | Refused:
            command = ReserveCredits(request_id=f"q{i}", caller=caller, amount=100, tokens=10, fee_bps=1000)
            reply = await nc.request(subjects.RESERVE_CREDITS, command.model_dump_json().encode(), timeout=5)
            return _ADMISSION.validate_json(reply.data)

        answers = await asyncio.gather(*(ask(i) for i in range(16)))
        assert sum(isinstance(a, Reserved) for a in answers) == 16
        assert await raw(ledger, caller.account_id) == (0, 1600, 1600)
        assert await ledger.check() == []
    finally:
        await nc.close()


async def test_a_refusal_waits_for_lease_credit_only_where_leases_were_lately(ledger: Ledger) -> None:
    """Billing tries a refused request again only for an account with a lease open or taken back lately: an
    account out of credit with none is refused in one try, whatever it sends."""
    broke = await caller_with(ledger, credits=5)
    assert await ledger.leases_lately(broke.account_id, 10) == ([], False)
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    assert await ledger.leases_lately(caller.account_id, 10) == ([(lease.lease_id, "r1")], True)
    await ledger.return_lease(returned(caller, lease.lease_id, 0))
    assert await ledger.leases_lately(caller.account_id, 10) == ([], True)
    await ledger.pool.execute("UPDATE leases SET touched_at = now() - interval '1 minute'")
    assert await ledger.leases_lately(caller.account_id, 10) == ([], False)
