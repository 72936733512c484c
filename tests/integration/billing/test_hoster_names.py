"""A live hoster's name is its own, against a real PostgreSQL: clients pick hosters by registered name
(OpenRouter's ``provider.only`` / ``order`` / ``ignore``), so the database refuses a second live hoster
under the same name whatever its case, even when two registrations race; a revoked hoster's name is free."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.billing.ledger import Ledger
from services.billing.repository import HosterNameTaken, HosterRepository, apply_migrations, migration_files

pytestmark = pytest.mark.integration

UNIQUE_NAMES = 10  # the migration that makes live hosters' names unique


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


async def register(pool: asyncpg.Pool, name: str) -> str:
    """A new hoster under ``name``; its id."""
    account = await Ledger(pool).create_account(f"hoster {name}", 0)
    hoster_id = str(uuid.uuid4())
    await HosterRepository(pool).register(hoster_id, name, None, False, account.id, f"U{uuid.uuid4().hex}")
    return hoster_id


async def live_names(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT id::text, name FROM hosters WHERE revoked_at IS NULL")
    return {r["id"]: r["name"] for r in rows}


async def test_a_live_hosters_name_is_refused_to_another_whatever_the_case(pool: asyncpg.Pool) -> None:
    await apply_migrations(pool)
    acme = await register(pool, "ACME")
    for same in ("acme", "Acme", "ACME"):
        with pytest.raises(HosterNameTaken):
            await register(pool, same)
        with pytest.raises(HosterNameTaken):
            await HosterRepository(pool).check_name(same)
    await register(pool, "acme-2")  # another name is another name
    assert sorted((await live_names(pool)).values()) == ["ACME", "acme-2"]
    # Once revoked, the name is free again; the revoked row keeps it.
    await HosterRepository(pool).revoke(acme)
    await HosterRepository(pool).check_name("acme")
    again = await register(pool, "acme")
    assert (await live_names(pool))[again] == "acme"
    assert await pool.fetchval("SELECT name FROM hosters WHERE id = $1", uuid.UUID(acme)) == "ACME"


async def test_two_registrations_at_once_under_one_name_one_wins(pool: asyncpg.Pool) -> None:
    await apply_migrations(pool)
    racers = [register(pool, "RACER" if i % 2 else "racer") for i in range(6)]
    outcomes = await asyncio.gather(*racers, return_exceptions=True)
    assert sum(isinstance(o, str) for o in outcomes) == 1
    assert all(isinstance(o, HosterNameTaken) for o in outcomes if not isinstance(o, str))


async def test_a_name_shaped_like_a_uuid_is_refused(pool: asyncpg.Pool) -> None:
    await apply_migrations(pool)
    some_id = str(uuid.uuid4())
    for name in (some_id, some_id.upper(), some_id.replace("-", ""), "{" + some_id + "}", f"urn:uuid:{some_id}"):
        with pytest.raises(ValueError, match="shaped like a UUID"):
            await register(pool, name)
    with pytest.raises(ValueError, match="blank"):
        await register(pool, "  ")
    assert await live_names(pool) == {}


async def test_the_migration_renames_later_duplicates_deterministically(pool: asyncpg.Pool) -> None:
    # A database from before the rule: migrations up to the one before it, then live duplicates.
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in migration_files():
            if version < UNIQUE_NAMES:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
    # Written directly: the ledger's queries are the latest schema's.
    account = str(uuid.uuid4())
    await pool.execute("INSERT INTO accounts (id, name) VALUES ($1, 'hosters')", uuid.UUID(account))
    rows = [
        ("00000000-0000-4000-8000-000000000001", "acme", "2024-01-01", None),
        ("ffffffff-0000-4000-8000-000000000002", "ACME", "2024-01-02", None),
        ("aaaaaaaa-0000-4000-8000-000000000003", "Acme", "2024-01-02", None),
        ("bbbbbbbb-0000-4000-8000-000000000004", "acme", "2023-01-01", "2023-06-01"),  # revoked: keeps it
        ("cccccccc-0000-4000-8000-000000000005", "acme-aaaaaaaa", "2024-01-03", None),  # the suffix is taken
        ("dddddddd-0000-4000-8000-000000000006", "solo", "2024-01-01", None),
    ]
    for hoster_id, name, created, revoked in rows:
        await pool.execute(
            """INSERT INTO hosters (id, name, account_id, nats_public_key, created_at, revoked_at)
               VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6::text::timestamptz)""",
            uuid.UUID(hoster_id), name, uuid.UUID(account), f"U{hoster_id}", created, revoked,
        )  # fmt: skip
    assert await apply_migrations(pool) == [name for version, name, _ in migration_files() if version >= UNIQUE_NAMES]
    assert await live_names(pool) == {
        "00000000-0000-4000-8000-000000000001": "acme",  # the earliest keeps its name
        "aaaaaaaa-0000-4000-8000-000000000003": "Acme-aaaaaaaa-2",  # same time: the smaller id goes first
        "ffffffff-0000-4000-8000-000000000002": "ACME-ffffffff",
        "cccccccc-0000-4000-8000-000000000005": "acme-aaaaaaaa",
        "dddddddd-0000-4000-8000-000000000006": "solo",
    }
    assert await pool.fetchval("SELECT name FROM hosters WHERE revoked_at IS NOT NULL") == "acme"
    with pytest.raises(HosterNameTaken):
        await register(pool, "ACME-FFFFFFFF")
