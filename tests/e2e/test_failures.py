"""What a client sees when parts of the network die or when it walks away mid-stream."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import asyncpg
import httpx
import openai
import pytest

from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, Stack
from tests.waits import until_stack_router_forgets

pytestmark = pytest.mark.e2e

SLOW = {"simulator": {"reply_tokens": 400, "tokens_per_second": 40}}
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "tell me more"}]


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0, timeout=60)


def simulator_stats(stack: Stack) -> dict[str, int]:
    port = stack.config.simulators[0].port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as response:
        stats: dict[str, int] = json.load(response)
        return stats


def test_router_killed_gives_a_503_with_retry_after_not_a_hang(fresh_stack: Stack, fresh_key: str) -> None:
    fresh_stack.kill("router")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        sdk(fresh_stack, fresh_key).chat.completions.create(model=DEMO_MODEL, messages=MESSAGES)
    assert time.monotonic() - started < 30
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"].isdigit()


def test_adapter_killed_mid_stream_ends_the_stream_with_an_error_the_sdk_raises(
    fresh_stack: Stack, fresh_key: str
) -> None:
    stream = sdk(fresh_stack, fresh_key).chat.completions.create(
        model=DEMO_MODEL, messages=MESSAGES, stream=True, extra_body=SLOW
    )
    killed_at: list[float] = []

    def read_all() -> None:
        for received, _ in enumerate(stream, start=1):
            if received == 3:
                fresh_stack.processes["hoster_adapter"].signal(signal.SIGKILL)
                killed_at.append(time.monotonic())

    with pytest.raises(openai.APIError) as info:
        read_all()
    assert time.monotonic() - killed_at[0] < 30
    assert "went away" in info.value.message or "stopped responding" in info.value.message


async def test_adapter_killed_before_a_request_gives_503(fresh_stack: Stack, fresh_key: str) -> None:
    fresh_stack.kill("hoster_adapter")
    await until_stack_router_forgets(fresh_stack, DEMO_HOSTER_ID)  # its heartbeats stopped past the router's TTL
    with pytest.raises(openai.APIStatusError) as info:
        sdk(fresh_stack, fresh_key).chat.completions.create(model=DEMO_MODEL, messages=MESSAGES)
    assert info.value.status_code == 503


async def test_client_disconnect_stops_the_hoster_and_bills_what_was_generated(
    fresh_stack: Stack, fresh_key: str
) -> None:
    body = {"model": DEMO_MODEL, "messages": MESSAGES, "stream": True, **SLOW}
    url = f"{fresh_stack.config.api_base}/chat/completions"
    auth = {"authorization": f"Bearer {fresh_key}"}
    with httpx.stream("POST", url, json=body, headers=auth, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        events = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 6:
                break
    left_at = time.monotonic()
    while simulator_stats(fresh_stack)["active_streams"]:
        assert time.monotonic() - left_at < 1.5, "the upstream request outlived the client"
        await asyncio.sleep(0.05)
    conn = await asyncpg.connect(fresh_stack.database_url)
    try:
        deadline = time.monotonic() + 10
        while not (rows := await conn.fetch("SELECT * FROM usage_records WHERE request_id = $1", request_id)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 10
        while True:
            held = await conn.fetchrow("SELECT * FROM reservations WHERE request_id = $1", request_id)
            assert held is not None
            if held["status"] != "open":
                break
            assert time.monotonic() < deadline, "the cancelled request was never settled"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    [row] = rows
    assert row["outcome"] == "cancelled"
    assert 5 <= row["completion_tokens"] < 100
    # Charged for what was generated before the client left: more than nothing, far less than 400 tokens.
    assert held["completion_tokens"] == row["completion_tokens"]
    assert 0 < held["charged"] < held["amount"]
