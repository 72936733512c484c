"""The ledger against a real PostgreSQL: atomic admission, idempotent settlement, the sweeper, the check."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncpg
import pytest

from libs.contracts.billing import BilledAttempt, Caller, RequestFinished, ReserveCredits, Reserved
from libs.contracts.common import Usage
from services.billing.accounts import Accounts
from services.billing.ledger import Ledger

pytestmark = pytest.mark.integration

HOSTER = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"


async def caller_with(ledger: Ledger, credits: int, rpm: int | None = None) -> Caller:
    account = await ledger.create_account("t", credits)
    created = await Accounts(ledger.pool).create_key(account.id, rpm, None)
    return Caller(account_id=account.id, key_id=created.info.key_id, rpm=rpm)


def reserve(caller: Caller, request_id: str, amount: int) -> ReserveCredits:
    return ReserveCredits(request_id=request_id, caller=caller, amount=amount, tokens=10, fee_bps=1000)


def done(caller: Caller, request_id: str, prompt: int, completion: int) -> RequestFinished:
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return RequestFinished(
        request_id=request_id,
        account_id=caller.account_id,
        model="m",
        outcome="succeeded",
        fee_bps=1000,
        attempts=[
            BilledAttempt(attempt=1, hoster_id=HOSTER, usage=usage, input_price=1_000_000, output_price=1_000_000)
        ],
        finished_at=time.time(),
    )


async def test_concurrent_reservations_never_overdraw(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=1000)
    results = await asyncio.gather(*(ledger.reserve(reserve(caller, f"r{i}", 100)) for i in range(60)))
    assert sum(isinstance(r, Reserved) for r in results) == 10
    state = await ledger.account(caller.account_id)
    assert (state.balance, state.reserved, state.spent_today) == (0, 1000, 1000)
    assert await ledger.check() == []


async def test_settlement_charges_once_pays_hoster_and_fee_and_releases_the_rest(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=1000)
    assert isinstance(await ledger.reserve(reserve(caller, "r1", 500)), Reserved)
    assert await ledger.settle(done(caller, "r1", 100, 100)) is True  # 200 to the hoster, 20 fee
    assert await ledger.settle(done(caller, "r1", 100, 100)) is False
    state = await ledger.account(caller.account_id)
    assert (state.balance, state.reserved, state.spent_today) == (780, 0, 220)
    assert await ledger.hoster_earnings(HOSTER) == [{"hoster_id": HOSTER, "earned": 200, "entries": 1}]
    assert await ledger.check() == []


async def test_the_routing_record_says_whether_the_usage_billed_was_the_networks_count(ledger: Ledger) -> None:
    """Verified when every billed attempt was counted (the router's settlement says so), "not verified" when
    any was held to byte bounds only, unknown when nothing was billed; settled alone or in a batch alike."""
    caller = await caller_with(ledger, credits=10_000)
    for request_id in ("counted", "claimed", "mixed", "nothing", "batch-counted", "batch-claimed"):
        assert isinstance(await ledger.reserve(reserve(caller, request_id, 500)), Reserved)

    def finished(request_id: str, *counted: bool) -> RequestFinished:
        event = done(caller, request_id, 10, 10)
        billed = event.attempts[0]
        attempts = [billed.model_copy(update={"attempt": n + 1, "usage_counted": c}) for n, c in enumerate(counted)]
        return event.model_copy(update={"attempts": attempts})

    await ledger.settle(finished("counted", True))
    await ledger.settle(finished("claimed", False))
    await ledger.settle(finished("mixed", True, False))
    await ledger.settle(finished("nothing"))
    assert await ledger.settle_many([finished("batch-counted", True), finished("batch-claimed", False)]) == 2
    accounts = Accounts(ledger.pool)
    verified = {}
    for request_id in ("counted", "claimed", "mixed", "nothing", "batch-counted", "batch-claimed"):
        record = await accounts.generation(caller.account_id, request_id)
        assert record is not None
        verified[request_id] = record.usage_verified
    assert verified == {"counted": True, "claimed": False, "mixed": False, "nothing": None, "batch-counted": True,
                        "batch-claimed": False}  # fmt: skip
    assert await ledger.check() == []


async def test_usage_beyond_the_reservation_is_charged_the_reservation_and_no_more(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=300)
    assert isinstance(await ledger.reserve(reserve(caller, "r1", 100)), Reserved)
    await ledger.settle(done(caller, "r1", 1000, 0))  # costs 1100: far more than held
    state = await ledger.account(caller.account_id)
    assert (state.balance, state.reserved) == (200, 0)  # the 100 held, nothing from the balance
    assert await ledger.check() == []


async def test_refusals_name_the_reason_and_leave_no_trace(ledger: Ledger) -> None:
    caller = await caller_with(ledger, credits=100)
    refused = await ledger.reserve(reserve(caller, "r1", 101))
    assert not isinstance(refused, Reserved)
    assert (refused.error.http_status, refused.error.code) == (402, "insufficient_credits")
    await ledger.set_daily_cap(caller.account_id, 50)
    capped = await ledger.reserve(reserve(caller, "r2", 60))
    assert not isinstance(capped, Reserved)
    assert capped.error.code == "daily_cap_reached"
    limited = await caller_with(ledger, credits=1000, rpm=2)
    outcomes = [await ledger.reserve(reserve(limited, f"q{i}", 1)) for i in range(3)]
    assert [isinstance(o, Reserved) for o in outcomes] == [True, True, False]
    assert not isinstance(outcomes[2], Reserved)
    assert outcomes[2].error.http_status == 429
    assert outcomes[2].error.retry_after is not None
    assert outcomes[1].rate.remaining_requests == 0
    assert await ledger.check() == []


async def test_the_sweeper_releases_a_request_that_never_finished_and_charges_nothing(
    ledger: Ledger, database_url: str
) -> None:
    """A reservation whose router died before settling it: the network has no record of what its client
    received, so it is released whole (a hoster's report alone is never billed)."""
    caller = await caller_with(ledger, credits=10_000)
    assert isinstance(await ledger.reserve(reserve(caller, "lost", 5000)), Reserved)
    assert isinstance(await ledger.reserve(reserve(caller, "young", 5000)), Reserved)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await pool.execute("UPDATE reservations SET touched_at = now() - interval '1 hour' WHERE request_id = 'lost'")
        # Old, but its router said a moment ago that it still runs: not stale.
        await pool.execute(
            "UPDATE reservations SET created_at = now() - interval '1 hour', touched_at = now() - interval '1 hour'"
            " WHERE request_id = 'young'"
        )
        await ledger.touch(["young", "no-such-request"])
    finally:
        await pool.close()
    assert await ledger.expire_stale(older_than_s=600) == 1
    state = await ledger.account(caller.account_id)
    assert (state.balance, state.reserved) == (10_000 - 5000, 5000)
    assert await ledger.expire_stale(older_than_s=600) == 0
    assert await ledger.check() == []


async def test_check_finds_a_balance_changed_behind_the_ledgers_back(ledger: Ledger, database_url: str) -> None:
    caller = await caller_with(ledger, credits=100)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", caller.account_id)
    finally:
        await conn.close()
    problems = await ledger.check()
    assert len(problems) == 1
    assert "balance 101 but entries sum 100" in problems[0]


async def test_a_request_settled_twice_at_once_and_swept_meanwhile_is_charged_once(
    ledger: Ledger, database_url: str
) -> None:
    """Settlement reads the reservation without a lock and claims it in the statement that charges it: two
    deliveries of one RequestFinished racing each other (and the sweeper) charge it exactly once."""
    caller = await caller_with(ledger, credits=100_000)
    for i in range(20):
        assert isinstance(await ledger.reserve(reserve(caller, f"race{i}", 500)), Reserved)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE reservations SET touched_at = now() - interval '1 hour' WHERE request_id LIKE 'race1%'"
        )
    finally:
        await conn.close()
    results = await asyncio.gather(
        *(ledger.settle(done(caller, f"race{i}", 100, 100)) for i in range(20) for _ in range(3)),
        ledger.expire_stale(older_than_s=600),
    )
    settled = results[:-1]
    swept = results[-1]
    assert isinstance(swept, int)
    assert sum(bool(r) for r in settled) + swept == 20  # each closed once, by a settle or by the sweeper
    state = await ledger.account(caller.account_id)
    assert state.reserved == 0
    assert state.balance == 100_000 - 220 * sum(bool(r) for r in settled)  # swept ones recorded no usage
    assert await ledger.check() == []


async def test_settling_in_batches_charges_each_request_once_whatever_races_it(
    ledger: Ledger, database_url: str
) -> None:
    """Batches holding the same request twice, overlapping batches, single settles and the sweeper, all at
    once, over requests of two accounts: each request is closed exactly once and every balance proves."""
    callers = [await caller_with(ledger, credits=100_000) for _ in range(2)]
    for i in range(30):
        assert isinstance(await ledger.reserve(reserve(callers[i % 2], f"batch{i}", 500)), Reserved)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE reservations SET touched_at = now() - interval '1 hour' WHERE request_id LIKE 'batch2%'"
        )
    finally:
        await conn.close()
    events = [done(callers[i % 2], f"batch{i}", 100, 100) for i in range(30)]
    results = await asyncio.gather(
        ledger.settle_many(events[:20] + events[:5]),
        ledger.settle_many(events[10:]),
        *(ledger.settle(e) for e in events[::3]),
        ledger.expire_stale(older_than_s=600),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    # A batch that lost a deadlock to another is rolled back whole (billing then settles its events one by one).
    assert all(isinstance(r, asyncpg.DeadlockDetectedError) for r in failed), failed
    for event in events:  # what billing does with events of a failed batch: each alone
        await ledger.settle(event)
    conn = await asyncpg.connect(database_url)
    try:
        statuses = await conn.fetch("SELECT status, charged FROM reservations WHERE request_id LIKE 'batch%'")
        closes = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE request_id LIKE 'batch%' AND kind IN ('settle', 'expire')"
        )
    finally:
        await conn.close()
    assert len(statuses) == 30
    assert {r["status"] for r in statuses} <= {"settled", "expired"}
    assert closes == 30  # one closing ledger transaction per request, never two
    for caller in callers:
        state = await ledger.account(caller.account_id)
        assert state.reserved == 0
    charged = sum(r["charged"] for r in statuses)
    total = sum([(await ledger.account(c.account_id)).balance for c in callers])
    assert total == 2 * 100_000 - charged
    assert await ledger.check() == []


async def test_a_keys_report_counts_its_own_charges_by_day_week_and_month(ledger: Ledger, database_url: str) -> None:
    caller = await caller_with(ledger, credits=10_000, rpm=30)
    other_key = (await Accounts(ledger.pool).create_key(caller.account_id, None, 5000)).info.key_id
    other = Caller(account_id=caller.account_id, key_id=other_key, tpm=5000)
    for request_id, who in (("today", caller), ("last-year", caller), ("last-week", caller), ("sibling", other)):
        assert isinstance(await ledger.reserve(reserve(who, request_id, 500)), Reserved)
        await ledger.settle(done(who, request_id, 100, 100))  # 220 each
    today = dt.datetime.now(dt.UTC).date()
    before_this_week = today - dt.timedelta(days=today.weekday() + 1)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE reservations SET spend_day = $1 WHERE request_id = 'last-year'", today.replace(year=today.year - 1)
        )
        await conn.execute("UPDATE reservations SET spend_day = $1 WHERE request_id = 'last-week'", before_this_week)
    finally:
        await conn.close()
    assert isinstance(await ledger.reserve(reserve(caller, "open", 1000)), Reserved)  # held, not charged

    report = await ledger.key_report(caller.key_id, caller.account_id)
    assert report is not None
    assert (report.rpm, report.tpm, report.prefix.startswith("ngk_")) == (30, None, True)
    assert (report.usage, report.usage_daily, report.usage_weekly) == (660, 220, 220)
    assert report.usage_monthly == (440 if before_this_week.month == today.month else 220)
    # The account's money: four charges and one hold out of the balance; today's spend counts the hold.
    assert (report.balance, report.daily_cap, report.spent_today) == (10_000 - 4 * 220 - 1000, None, 4 * 220 + 1000)
    sibling = await ledger.key_report(other_key, caller.account_id)
    assert sibling is not None
    assert (sibling.usage, sibling.tpm) == (220, 5000)
    stranger = await caller_with(ledger, credits=1)
    assert await ledger.key_report(caller.key_id, stranger.account_id) is None
