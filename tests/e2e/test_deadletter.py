"""A usage event billing cannot handle never blocks or loops its consumer: one it cannot read is set aside at
once; one whose handling keeps failing is retried with a growing delay and set aside after its last
delivery; requests behind them settle as usual; an operator lists them and replays one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from libs.contracts import subjects
from libs.contracts.billing import DispatchRecord, RequestFinished
from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack
from tests.e2e.test_money import settled

pytestmark = pytest.mark.e2e

MAX_DELIVER, BACKOFF_S = 3, 0.2


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = build_stack(CS_BILLING_MAX_DELIVER=str(MAX_DELIVER), CS_BILLING_RETRY_BACKOFF_S=str(BACKOFF_S))
    yield running
    running.stop()


async def dead_letters(stack: Stack, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
    """``computeshare deadletter list`` once it shows ``count`` letters."""
    deadline = time.monotonic() + timeout_s
    while True:
        letters: list[dict[str, Any]] = await asyncio.to_thread(stack.computeshare, "deadletter", "list")
        if len(letters) >= count or time.monotonic() > deadline:
            return letters
        await asyncio.sleep(0.3)


async def test_poison_events_are_dead_lettered_and_the_stream_keeps_flowing(stack: Stack) -> None:
    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-poison", "test")))
    js = nc.jetstream()
    try:
        # Unreadable: set aside at its first delivery.
        await js.publish(subjects.REQUEST_FINISHED, b'{"request_id": ', headers={"Nats-Msg-Id": "poison-1"})
        # Readable, but PostgreSQL refuses it every time (no such hoster id can exist): retried, then set aside.
        record = DispatchRecord(
            attempt=1, hoster_id="not-a-uuid", adapter_id="a", model=DEMO_MODEL, stream=False, outcome="succeeded",
            prompt_tokens=1, completion_tokens=1, input_price=1, output_price=1, chunks_sent=1, duration_ms=1.0,
            finished_at=time.time(),
        )  # fmt: skip
        event = RequestFinished(
            request_id="chatcmpl-poison", account_id="a", model=DEMO_MODEL, outcome="succeeded", fee_bps=0,
            attempts=[], finished_at=time.time(), records=[record],
        )  # fmt: skip
        published = time.monotonic()
        await js.publish(subjects.REQUEST_FINISHED, event.model_dump_json().encode(), headers={"Nats-Msg-Id": "p2"})

        # A real request right behind them settles as usual.
        account_id, key = stack.create_account(credits="1")
        async with httpx.AsyncClient(base_url=stack.config.api_base, timeout=30) as client:
            response = await client.post(
                "/chat/completions",
                json={"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                headers={"authorization": f"Bearer {key}"},
            )
        assert response.status_code == 200
        await settled(stack, account_id)
        assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}

        letters = await dead_letters(stack, 2)
        assert [letter["subject"] for letter in letters] == [subjects.REQUEST_FINISHED] * 2, letters
        unreadable = next(letter for letter in letters if letter["body"] == '{"request_id": ')
        assert (unreadable["consumer"], unreadable["deliveries"]) == (subjects.BILLING_REQUESTS_DURABLE, 1)
        refused = next(letter for letter in letters if letter is not unreadable)
        assert (refused["consumer"], refused["deliveries"]) == (subjects.BILLING_REQUESTS_DURABLE, MAX_DELIVER)
        assert "uuid" in refused["error"].lower()
        # Retried after BACKOFF_S, then twice that: not at once, and not for ever.
        assert refused["failed_at"] - (time.time() - (time.monotonic() - published)) >= BACKOFF_S * 3 - 0.1

        # The operator replays one: it goes back to billing (and, still unreadable, comes back here).
        replayed = stack.computeshare("deadletter", "replay", str(unreadable["seq"]))
        assert replayed["subject"] == subjects.REQUEST_FINISHED
        again = await dead_letters(stack, 2)
        assert unreadable["seq"] not in [letter["seq"] for letter in again]
        assert len(again) == 2
    finally:
        await nc.close()
