"""Billing's integration fixtures: its SQL over a real PostgreSQL, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.billing.ledger import Ledger
from services.billing.repository import apply_migrations


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=20)
    await apply_migrations(pool)
    yield Ledger(pool)
    await pool.close()
