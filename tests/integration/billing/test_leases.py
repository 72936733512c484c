"""Credit leases against a real PostgreSQL: what a lease may hold, how its requests are recorded and settled
(in either order, once), what goes back when it is returned, recalled or swept, and that the books balance."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.contracts.billing import (
    Caller,
    LeaseCredits,
    LeasedAdmission,
    LeasedAdmissions,
    LeaseGranted,
    LeaseRefused,
    LeaseReturned,
    RequestFinished,
)
from services.billing.ledger import Ledger, Unbacked
from services.billing.repository import apply_migrations
from tests.integration.billing.test_ledger import HOSTER, caller_with, done

pytestmark = pytest.mark.integration

SHARE = 8


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=20)
    await apply_migrations(pool)
    yield Ledger(pool)
    await pool.close()


async def granted(ledger: Ledger, caller: Caller, amount: int, minimum: int = 1) -> LeaseGranted:
    answer = await ledger.lease(
        LeaseCredits(account_id=caller.account_id, router_id="r1", amount=amount, minimum=minimum), SHARE
    )
    assert isinstance(answer, LeaseGranted)
    return answer


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
    refused = await ledger.lease(
        LeaseCredits(account_id=small.account_id, router_id="r1", amount=100, minimum=10), SHARE
    )
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
    assert await ledger.return_lease(LeaseReturned(lease_id=lease.lease_id, admitted=900)) == 100
    assert await ledger.return_lease(LeaseReturned(lease_id=lease.lease_id, admitted=900)) == 0
    assert await raw(ledger, caller.account_id) == (8000 - 660, 0, 660)
    assert await ledger.hoster_earnings(HOSTER) == [{"hoster_id": HOSTER, "earned": 600, "entries": 3}]
    assert await ledger.check() == []


async def test_a_settlement_before_its_batch_records_the_reservation_itself(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=8000)
    lease = await granted(ledger, caller, amount=1000)
    # Returned first (the router's word: 600 admitted), then the settlement, then the batch: each once.
    assert await ledger.return_lease(LeaseReturned(lease_id=lease.lease_id, admitted=600)) == 400
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
    assert await ledger.expire_stale_leases(60) == 0
    await ledger.pool.execute("UPDATE leases SET touched_at = now() - interval '2 minutes'")
    assert await ledger.expire_stale_leases(60) == 1
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
    # A race may refuse one side for a moment (it is redelivered); retried, it changes nothing.
    for i in ids:
        await ledger.record_leased(LeasedAdmissions(lease_id=lease.lease_id, admissions=[admitted(caller, i, 500)]))
        await ledger.settle(leased_done(caller, lease.lease_id, i, 500, 100))
    assert not [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, asyncpg.PostgresError)]
    attached = await ledger.pool.fetchval("SELECT attached FROM leases WHERE lease_id = $1", uuid.UUID(lease.lease_id))
    assert attached == 20 * 500
    assert await ledger.return_lease(LeaseReturned(lease_id=lease.lease_id, admitted=10_000)) == 0
    assert await raw(ledger, caller.account_id) == (80_000 - 20 * 220, 0, 20 * 220)
    assert await ledger.check() == []
