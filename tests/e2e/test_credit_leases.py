"""Credit leases end to end: requests admitted by routers against credit billing holds for them are charged
exactly once, credit in one router's lease never makes another refuse, and every lease comes back, from a
router that stops or from one that dies."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator

import asyncpg
import pytest

from libs.devstack.stack import Stack
from tests.e2e.conftest import build_stack
from tests.e2e.test_money import SLOW_EXACT, body, burst, credits_for, reserved_per_request, settled, urls

pytestmark = pytest.mark.e2e

# Billing's lease TTL and sweep interval in the test of a dead router's lease.
LEASE_TTL_S, SWEEP_INTERVAL_S = 3.0, 0.5


@pytest.fixture(scope="module")
def two_routers() -> Iterator[Stack]:
    running = build_stack(ingresses=2, routers=2, CS_ROUTER_LEASE_IDLE_S="0.5")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def each(two_routers: Stack) -> int:
    return reserved_per_request(two_routers)


async def until_settled(stack: Stack, account_id: str, requests: int, timeout_s: float = 20) -> None:
    """Until ``requests`` of the account's requests are settled (a leased request's reservation may be recorded
    only with its settlement, so "no open reservation" alone says little)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout_s
        query = "SELECT count(*) FROM reservations WHERE account_id = $1 AND status = 'settled'"
        while await conn.fetchval(query, account_id) < requests:
            assert time.monotonic() < deadline, "requests not settled"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def until_kept_past_the_ttl(stack: Stack, account_id: str, timeout_s: float = 30) -> None:
    """Until every open lease of the account has been kept alive past ``LEASE_TTL_S`` (touched later than its
    TTL after it was granted) and has lived two sweeps longer still, on the database's clock: a sweep ran when
    the lease, had its router not kept it alive, would have been stale (billing's sweeper leaves no trace of a
    sweep that took nothing back, so the sweeps are counted from the configured interval)."""
    conn = await asyncpg.connect(stack.database_url)
    ttl, after = dt.timedelta(seconds=LEASE_TTL_S), dt.timedelta(seconds=LEASE_TTL_S + 2 * SWEEP_INTERVAL_S)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            leases = await conn.fetch(
                "SELECT created_at, touched_at, now() AS now FROM leases WHERE account_id = $1 AND status = 'open'",
                account_id,
            )
            assert leases, "no open lease: it was taken back while its router lived"
            if all(r["touched_at"] > r["created_at"] + ttl and r["now"] > r["created_at"] + after for r in leases):
                return
            assert time.monotonic() < deadline, f"leases not kept past their TTL: {[dict(r) for r in leases]}"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def books(stack: Stack, account_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow(
            """SELECT a.balance, a.reserved,
                      (SELECT count(*) FROM leases l WHERE l.account_id = a.id) AS leases,
                      (SELECT count(*) FROM reservations r WHERE r.account_id = a.id) AS requests,
                      (SELECT count(*) FROM reservations r WHERE r.account_id = a.id AND r.lease_id IS NOT NULL)
                          AS leased,
                      (SELECT coalesce(sum(charged), 0)::bigint FROM reservations r WHERE r.account_id = a.id)
                          AS charged
               FROM accounts a WHERE a.id = $1""",
            account_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def test_a_burst_through_two_routers_rides_on_leases_is_charged_once_and_every_lease_comes_back(
    two_routers: Stack,
) -> None:
    account_id, key = two_routers.create_account(credits="1000")
    responses = await burst(urls(two_routers), key, 120, body())
    assert Counter(r.status_code for r in responses) == {200: 120}
    await until_settled(two_routers, account_id, 120)
    await settled(two_routers, account_id)
    found = await books(two_routers, account_id)
    assert found["requests"] == 120
    assert found["leased"] == 120  # no request needed billing's round trip
    assert 2 <= found["leases"] <= 20  # one lease admits many requests (at least one per router)
    assert found["reserved"] == 0
    assert found["balance"] == 1000 * 1_000_000 - found["charged"]
    charged = round(sum(r.json()["usage"]["cost"] for r in responses) * 1_000_000)
    assert found["charged"] == charged
    assert two_routers.computeshare("ledger", "check")["ok"] is True


async def test_credit_for_exactly_50_across_two_routers_admits_exactly_50(two_routers: Stack, each: int) -> None:
    """The routers' leases are recalled before billing refuses anyone: no credit sits idle in one router's
    lease while the other refuses."""
    account_id, key = two_routers.create_account(credits=credits_for(50, each))
    responses = await burst(urls(two_routers), key, 200, body(**SLOW_EXACT))
    assert Counter(r.status_code for r in responses) == {200: 50, 402: 150}
    await settled(two_routers, account_id)
    found = await books(two_routers, account_id)
    assert found["reserved"] == 0
    assert found["balance"] >= 0
    assert two_routers.computeshare("ledger", "check")["ok"] is True


async def test_a_router_that_dies_holding_a_lease_has_it_taken_back_by_the_sweeper() -> None:
    stack = build_stack(
        CS_ROUTER_LEASE_IDLE_S="600",
        CS_ROUTER_LEASE_KEEPALIVE_S="0.5",
        CS_BILLING_LEASE_TTL_S=str(LEASE_TTL_S),
        CS_BILLING_SWEEP_INTERVAL_S=str(SWEEP_INTERVAL_S),
    )
    try:
        account_id, key = stack.create_account(credits="100")
        responses = await burst(urls(stack), key, 10, body())
        assert Counter(r.status_code for r in responses) == {200: 10}
        await until_settled(stack, account_id, 10)
        held = await books(stack, account_id)
        assert held["reserved"] > 0  # the idle lease is still the router's
        await until_kept_past_the_ttl(stack, account_id)
        assert (await books(stack, account_id))["reserved"] == held["reserved"]
        stack.kill("router")
        deadline = time.monotonic() + 20
        while (found := await books(stack, account_id))["reserved"]:
            assert time.monotonic() < deadline, "the dead router's lease was not taken back"
            await asyncio.sleep(0.2)
        assert found["balance"] == 100 * 1_000_000 - found["charged"]
        assert stack.computeshare("ledger", "check")["ok"] is True
    finally:
        stack.stop()
