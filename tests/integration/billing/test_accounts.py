"""What a management key and a hoster's console token read, against a real PostgreSQL: always within the
account (or hoster) asked about, last use from admitted requests, usage grouped per UTC day."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.contracts.billing import BilledAttempt, Caller, DispatchRecord, RequestFinished, ReserveCredits, Reserved
from libs.contracts.common import Usage
from libs.contracts.management import AccountRequestsQuery, HosterAttemptsQuery, SetKeyLimits
from libs.platform.apikeys import hash_key
from services.billing.accounts import Accounts
from services.billing.ledger import Ledger
from services.billing.repository import HosterRepository, apply_migrations

pytestmark = pytest.mark.integration

HOSTER = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"
OTHER_HOSTER = "6a1d7f4e-3e8b-4d66-8b62-1e4d3c7f8b12"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    await apply_migrations(pool)
    yield pool
    await pool.close()


async def account_with_key(pool: asyncpg.Pool, credits: int = 100_000) -> tuple[str, Caller]:
    account = await Ledger(pool).create_account("t", credits)
    created = await Accounts(pool).create_key(account.id, label="app")
    return account.id, Caller(account_id=account.id, key_id=created.info.key_id)


async def served(pool: asyncpg.Pool, caller: Caller, request_id: str, hoster: str = HOSTER) -> None:
    """A request admitted, its attempt recorded and the request settled (220 micro-credits)."""
    ledger = Ledger(pool)
    admitted = await ledger.reserve(
        ReserveCredits(request_id=request_id, caller=caller, amount=500, tokens=10, fee_bps=1000)
    )
    assert isinstance(admitted, Reserved)
    usage = Usage(prompt_tokens=100, completion_tokens=100, total_tokens=200)
    billed = BilledAttempt(attempt=1, hoster_id=hoster, usage=usage, input_price=1_000_000, output_price=1_000_000)
    await ledger.settle(
        RequestFinished(
            request_id=request_id,
            account_id=caller.account_id,
            model="m",
            outcome="succeeded",
            fee_bps=1000,
            attempts=[billed],
            finished_at=time.time(),
            records=[
                DispatchRecord(
                    attempt=1,
                    hoster_id=hoster,
                    adapter_id="a",
                    model="m",
                    stream=False,
                    outcome="succeeded",
                    prompt_tokens=100,
                    completion_tokens=100,
                    input_price=1_000_000,
                    output_price=1_000_000,
                    chunks_sent=1,
                    ttft_ms=42.0,
                    duration_ms=300.0,
                    finished_at=time.time(),
                )
            ],
        )
    )


async def test_keys_of_both_kinds_their_last_use_and_no_other_accounts(pool: asyncpg.Pool) -> None:
    accounts = Accounts(pool)
    account_id, caller = await account_with_key(pool)
    manager = await accounts.create_key(account_id, kind="management", label="ops")
    stranger_id, stranger = await account_with_key(pool)
    await served(pool, caller, "mine")
    await served(pool, stranger, "theirs")

    keys = await accounts.keys(account_id)
    assert {(k.key_id, k.kind) for k in keys} == {(caller.key_id, "inference"), (manager.info.key_id, "management")}
    used = next(k for k in keys if k.key_id == caller.key_id)
    assert used.last_used_at is not None
    assert abs(used.last_used_at - time.time()) < 60
    assert next(k for k in keys if k.kind == "management").last_used_at is None

    # Another account's key: not shown, not changed, not revoked.
    assert await accounts.key(account_id, stranger.key_id) is None
    change = SetKeyLimits(account_id=account_id, key_id=stranger.key_id, update=["rpm"], rpm=1)
    assert await accounts.update_key(change) is None
    assert await accounts.revoke_account_key(account_id, stranger.key_id) is None
    theirs = await accounts.key(stranger_id, stranger.key_id)
    assert theirs is not None
    assert (theirs.rpm, theirs.revoked_at) == (None, None)


async def test_verification_tells_the_kinds_apart(pool: asyncpg.Pool) -> None:
    accounts = Accounts(pool)
    account_id, _ = await account_with_key(pool)
    inference = await accounts.create_key(account_id)
    manager = await accounts.create_key(account_id, kind="management")
    assert (await accounts.verify_key(hash_key(manager.key))).kind == "management"
    assert (await accounts.verify_key(hash_key(inference.key))).kind == "inference"
    verified = await accounts.verify_management_key(hash_key(manager.key))
    assert (verified.status, verified.account_id, verified.key_id) == ("valid", account_id, manager.info.key_id)
    assert (await accounts.verify_management_key(hash_key(inference.key))).status == "not_management"
    assert (await accounts.verify_management_key("zz")).status == "unknown"
    revoked = await accounts.revoke_account_key(account_id, manager.info.key_id)
    assert revoked is not None
    assert revoked[1] == hash_key(manager.key)
    assert (await accounts.verify_management_key(hash_key(manager.key))).status == "revoked"


async def test_limits_change_only_as_named_and_clear_with_none(pool: asyncpg.Pool) -> None:
    accounts = Accounts(pool)
    account_id, caller = await account_with_key(pool)
    first = await accounts.update_key(
        SetKeyLimits(account_id=account_id, key_id=caller.key_id, update=["rpm", "tpm"], rpm=5, tpm=500)
    )
    assert first is not None
    assert (first[0].rpm, first[0].tpm, first[0].label) == (5, 500, "app")
    second = await accounts.update_key(
        SetKeyLimits(account_id=account_id, key_id=caller.key_id, update=["rpm", "label"])
    )
    assert second is not None
    assert (second[0].rpm, second[0].tpm, second[0].label) == (None, 500, None)
    assert (await accounts.verify_key(second[1])).tpm == 500


async def test_usage_per_day_groups_by_utc_day_with_zeros_and_only_the_account(pool: asyncpg.Pool) -> None:
    accounts = Accounts(pool)
    account_id, caller = await account_with_key(pool)
    _, stranger = await account_with_key(pool)
    for request_id in ("a", "b", "c"):
        await served(pool, caller, request_id)
    await served(pool, stranger, "stranger")
    today = dt.datetime.now(dt.UTC).date()
    await pool.execute(
        "UPDATE reservations SET spend_day = $1, created_at = created_at - interval '2 days' WHERE request_id = 'c'",
        today - dt.timedelta(days=2),
    )
    days = await accounts.daily_usage(account_id, 4, today)
    assert [d.day for d in days] == [(today - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1, 0)]
    assert [d.requests for d in days] == [0, 1, 0, 2]
    assert [d.spend for d in days] == [0, 220, 0, 440]
    assert (days[-1].prompt_tokens, days[-1].completion_tokens) == (200, 200)


async def test_requests_and_routing_records_stay_within_the_account(pool: asyncpg.Pool) -> None:
    accounts = Accounts(pool)
    account_id, caller = await account_with_key(pool)
    stranger_id, stranger = await account_with_key(pool)
    await served(pool, caller, "mine")
    await served(pool, stranger, "theirs")
    (mine,) = await accounts.requests(AccountRequestsQuery(account_id=account_id))
    assert (mine.request_id, mine.key_id, mine.hoster_id, mine.outcome, mine.attempts) == (
        "mine", caller.key_id, HOSTER, "succeeded", 1)  # fmt: skip
    assert (mine.ttft_ms, mine.duration_ms, mine.cost, mine.status, mine.endpoint) == (
        42.0, 300.0, 220, "settled", "chat.completions")  # fmt: skip
    assert await accounts.requests(AccountRequestsQuery(account_id=account_id, before=mine.created_at)) == []
    record = await accounts.generation(account_id, "mine")
    assert record is not None
    assert record.attempts[0].hoster_id == HOSTER
    assert await accounts.generation(account_id, "theirs") is None
    assert await accounts.generation(stranger_id, "theirs") is not None


async def test_a_hosters_token_days_and_attempts(pool: asyncpg.Pool) -> None:
    hosters = HosterRepository(pool)
    owner = await Ledger(pool).create_account("hoster", 0)
    await hosters.register(HOSTER, "box", "eu", False, owner.id, "UPUBKEY1", hash_key("ngh_" + "t" * 43))
    info = await hosters.verify_console_token(hash_key("ngh_" + "t" * 43))
    assert (info.status, info.hoster_id, info.name) == ("valid", HOSTER, "box")
    assert (await hosters.verify_console_token(hash_key("ngh_" + "u" * 43))).status == "unknown"

    _, caller = await account_with_key(pool)
    await served(pool, caller, "r1")
    await served(pool, caller, "r2", hoster=OTHER_HOSTER)
    await pool.execute(
        "UPDATE reservations SET usage_discrepancy = $1 WHERE request_id = 'r1'",
        f"attempt 1 ({HOSTER}): reported 999 completion tokens, billed 100; attempt 2 ({OTHER_HOSTER}): other",
    )
    report = await hosters.daily(HOSTER, 2)
    assert [(d.attempts, d.succeeded, d.earned) for d in report.days] == [(0, 0, 0), (1, 1, 200)]
    assert report.earned_total == 200
    (attempt,) = await hosters.attempts(HosterAttemptsQuery(hoster_id=HOSTER))
    assert (attempt.request_id, attempt.outcome, attempt.ttft_ms) == ("r1", "succeeded", 42.0)
    assert attempt.usage_discrepancy == "reported 999 completion tokens, billed 100"  # its own part only

    await hosters.revoke(HOSTER)
    assert (await hosters.verify_console_token(hash_key("ngh_" + "t" * 43))).status == "revoked"
