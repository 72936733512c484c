from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.contracts.common import Usage
from libs.contracts.routing import AttemptFinished
from services.billing.repository import UsageRepository, apply_migrations, migration_files

pytestmark = pytest.mark.integration


def finished(request_id: str = "chatcmpl-1", attempt: int = 1, completion: int = 5) -> AttemptFinished:
    return AttemptFinished(
        request_id=request_id, attempt=attempt, hoster_id="5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01",
        adapter_id="adapter-1", model="m", stream=True, outcome="succeeded",
        usage=Usage(prompt_tokens=3, completion_tokens=completion, total_tokens=3 + completion),
        chunks_sent=completion, input_price=500_000, output_price=1_500_000, finish_reason="stop",
        duration_ms=12.5, finished_at=time.time(),
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


async def test_recording_the_same_attempt_twice_keeps_one_row(pool: asyncpg.Pool) -> None:
    await apply_migrations(pool)
    usage = UsageRepository()
    usage.attach(pool)
    assert await usage.record_attempt(finished()) is True
    assert await usage.record_attempt(finished(completion=99)) is False
    assert await usage.record_attempt(finished(attempt=2)) is True
    rows = await usage.usage_of("chatcmpl-1")
    assert [(r["attempt"], r["completion_tokens"]) for r in rows] == [(1, 5), (2, 5)]
    assert rows[0]["outcome"] == "succeeded"
    assert rows[0]["input_price"] == 500_000
