"""A stream longer than the reservation TTL keeps its hold: its router tells billing it is still running, the
sweeper leaves it alone, and it is charged exactly once, on its own usage, when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack
from tests.e2e.records import reservation
from tests.e2e.test_money import settled

pytestmark = pytest.mark.e2e

TTL_S = 2


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = build_stack(
        CS_BILLING_RESERVATION_TTL_S=str(TTL_S),
        CS_BILLING_SWEEP_INTERVAL_S="0.3",
        CS_ROUTER_RESERVATION_KEEPALIVE_S="0.5",
    )
    yield running
    running.stop()


async def test_a_stream_three_times_the_reservation_ttl_is_charged_once_on_its_usage(stack: Stack) -> None:
    account_id, key = stack.create_account(credits="1")
    body = {
        "model": DEMO_MODEL, "messages": [{"role": "user", "content": "take your time"}], "max_tokens": 12,
        "stream": True, "stream_options": {"include_usage": True},
        "simulator": {"reply_tokens": 12, "tokens_per_second": 2},  # 6 s
    }  # fmt: skip
    async with (
        httpx.AsyncClient(base_url=stack.config.api_base, timeout=60) as client,
        client.stream("POST", "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as response,
    ):
        chunks = [orjson.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: {")]
    [usage] = [c["usage"] for c in chunks if c.get("usage")]
    assert usage["completion_tokens"] == 12
    await settled(stack, account_id)
    row = await reservation(stack, response.headers["x-request-id"])
    assert row["status"] == "settled"  # not swept as stale while it streamed
    assert row["completion_tokens"] == 12
    assert row["charged"] == round(usage["cost"] * 1e6)
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}
