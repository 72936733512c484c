"""Reading what the gateway recorded of a request: through its public API, or billing's own table."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx

from libs.devstack.stack import Stack


def routing_record(
    stack: Stack, key: str, request_id: str, timeout_s: float = 10, settled: bool = False
) -> dict[str, Any]:
    """``GET /v1/generation/{id}`` once billing has recorded an attempt of the request (with ``settled``, once
    it has settled it too: before, its tokens and cost are 0)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(
            f"{stack.config.api_base}/generation/{request_id}", headers={"authorization": f"Bearer {key}"}
        )
        ready = response.status_code == 200 and response.json()["attempts"]
        if ready and (not settled or response.json()["status"] != "open"):
            data: dict[str, Any] = response.json()
            return data
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)


async def reservation(stack: Stack, request_id: str) -> asyncpg.Record:
    """Billing's row of the request's reservation (amount held, charged, status, tokens)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM reservations WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert row is not None, request_id
    return row
