from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.contracts.billing import DispatchRecord, RequestFinished
from services.billing.repository import RECORD, apply_migrations, migration_files, records_of

pytestmark = pytest.mark.integration

HOSTER = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"
OTHER = "6a1d7f4e-3e8b-4d66-8b62-1e4d3c7f8b12"


def record(attempt: int = 1, completion: int = 5, hoster_id: str = HOSTER) -> DispatchRecord:
    return DispatchRecord(
        attempt=attempt, hoster_id=hoster_id, adapter_id="adapter-1", model="m", stream=True, outcome="succeeded",
        prompt_tokens=3, completion_tokens=completion, input_price=500_000, output_price=1_500_000,
        chunks_sent=completion, finish_reason="stop", duration_ms=12.5, finished_at=time.time(),
    )  # fmt: skip


def settled(*records: DispatchRecord) -> RequestFinished:
    return RequestFinished(
        request_id="chatcmpl-1", account_id="a", model="m", outcome="succeeded", fee_bps=0, attempts=[],
        finished_at=time.time(), records=list(records),
    )  # fmt: skip


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_migrations_apply_once_in_order(pool: asyncpg.Pool) -> None:
    first = await apply_migrations(pool)
    assert first == [name for _, name, _ in migration_files()]
    assert await apply_migrations(pool) == []
    versions = [r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in migration_files()]


async def test_a_settlements_records_are_kept_once_per_attempt_and_hoster(pool: asyncpg.Pool) -> None:
    """A redelivered settlement changes no record; the key holds the hoster too, so no record of one hoster
    can stand in for another's."""
    await apply_migrations(pool)
    await pool.executemany(RECORD, records_of([settled(record(), record(attempt=2))]))
    await pool.executemany(RECORD, records_of([settled(record(completion=99), record(attempt=1, hoster_id=OTHER))]))
    rows = await pool.fetch("SELECT * FROM usage_records WHERE request_id = 'chatcmpl-1' ORDER BY attempt, hoster_id")
    assert [(r["attempt"], str(r["hoster_id"]), r["completion_tokens"]) for r in rows] == [
        (1, HOSTER, 5),
        (1, OTHER, 5),
        (2, HOSTER, 5),
    ]
    assert rows[0]["outcome"] == "succeeded"
    assert rows[0]["input_price"] == 500_000
