from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from libs.contracts import subjects
from libs.contracts.billing import DispatchRecord, RequestFinished
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn

pytestmark = pytest.mark.integration


async def rows_for(database_url: str, request_id: str, timeout_s: float = 10.0, want: int = 1) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            try:
                rows = await conn.fetch("SELECT * FROM usage_records WHERE request_id = $1", request_id)
            except asyncpg.UndefinedTableError:
                rows = []
            if len(rows) >= want or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def finished(request_id: str) -> RequestFinished:
    """A settlement of a request billing never reserved (its records are kept all the same)."""
    record = DispatchRecord(
        attempt=1, hoster_id="5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01", adapter_id="adapter-1", model="m", stream=True,
        outcome="succeeded", prompt_tokens=3, completion_tokens=5, input_price=500_000, output_price=1_500_000,
        chunks_sent=5, duration_ms=12.5, finished_at=time.time(),
    )  # fmt: skip
    return RequestFinished(
        request_id=request_id, account_id="a", model="m", outcome="succeeded", fee_bps=0, attempts=[],
        finished_at=time.time(), records=[record],
    )  # fmt: skip


async def publish(nats_server: NatsTestServer, event: RequestFinished, msg_id: str) -> None:
    nc = await nats_server.connect()
    try:
        await nc.jetstream().publish(
            subjects.REQUEST_FINISHED, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id}
        )
    finally:
        await nc.close()


async def test_records_survive_billing_downtime_and_redelivery_never_duplicates(
    nats_server: NatsTestServer, database_url: str, spawn: Spawn
) -> None:
    env = {**nats_server.env("billing", "billing"), "CS_BILLING_DATABASE_URL": database_url}
    billing = spawn("billing", "billing", env, marker="billing ready")

    await publish(nats_server, finished("chatcmpl-a"), "chatcmpl-a:finished")
    assert len(await rows_for(database_url, "chatcmpl-a")) == 1

    # The same event again under another message id (as after a publisher retry past the dedupe window).
    await publish(nats_server, finished("chatcmpl-a"), "chatcmpl-a:finished:again")
    await asyncio.sleep(0.5)
    assert len(await rows_for(database_url, "chatcmpl-a", timeout_s=0)) == 1

    billing.stop()
    await publish(nats_server, finished("chatcmpl-b"), "chatcmpl-b:finished")
    assert await rows_for(database_url, "chatcmpl-b", timeout_s=0.5) == []
    spawn("billing-again", "billing", env, marker="billing ready")
    rows = await rows_for(database_url, "chatcmpl-b")
    assert [(r["attempt"], r["completion_tokens"]) for r in rows] == [(1, 5)]
