"""A hoster's word is checked before anyone pays on it: a hoster reporting 1,000 times its usage, or negative
usage, through the real stack (real nats-server, real PostgreSQL). The client pays the bounded amount, never a
negative one and never more than its reservation; the response's usage is the bounded one; the routing record
says what was reported; the hoster's trust falls; every request settles and the ledger balances."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import orjson
import pytest

from libs.contracts import subjects
from libs.contracts.hosters import LiveHoster, LiveHosters
from libs.devstack.processes import free_port
from libs.devstack.stack import (
    DEMO_HOSTER_ID,
    DEMO_MODEL,
    AdapterSpec,
    SimulatorSpec,
    Stack,
    demo_hoster,
    throwaway_config,
)
from tests.e2e.records import reservation, routing_record
from tests.e2e.test_money import settled

pytestmark = pytest.mark.e2e

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    sim = SimulatorSpec("sim", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "12"})
    # The one hoster lies on purpose, request after request: it must keep serving (no cooldown for it here).
    config = throwaway_config(
        simulators=[sim],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(sim.base_url)])],
        service_env={"CS_ROUTER_DISCREPANCIES_TO_COOL": "0"},
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


async def hoster(stack: Stack) -> LiveHoster:
    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-hosters", "test")))
    try:
        reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=2)
    finally:
        await nc.close()
    [found] = [h for h in LiveHosters.model_validate_json(reply.data).hosters if h.hoster_id == DEMO_HOSTER_ID]
    return found


def ask(stack: Stack, key: str, factor: float, stream: bool) -> tuple[dict[str, Any], str]:
    """One request whose hoster reports ``factor`` times its usage; the usage the client saw, and the id."""
    body: dict[str, Any] = {
        "model": DEMO_MODEL, "messages": [{"role": "user", "content": "count the waves"}], "max_tokens": MAX_TOKENS,
        "simulator": {"usage_factor": factor},
    }  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    if not stream:
        response = httpx.post(f"{stack.config.api_base}/chat/completions", json=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        usage: dict[str, Any] = response.json()["usage"]
        return usage, response.headers["x-request-id"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{stack.config.api_base}/chat/completions", json=body, headers=headers) as response:
        chunks = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        [usage] = [c["usage"] for c in chunks if c.get("usage")]
        return usage, response.headers["x-request-id"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("factor", [1000, -1], ids=["1000x", "negative"])
async def test_reported_usage_is_held_to_its_bounds_for_the_client_the_ledger_and_the_hoster(
    stack: Stack, factor: float, stream: bool
) -> None:
    account_id, key = stack.create_account(credits="0.001")
    before = await hoster(stack)
    usage, request_id = await asyncio.to_thread(ask, stack, key, factor, stream)

    # The client sees the bounded usage, priced as billed: never past max_tokens, never below zero.
    assert 0 <= usage["completion_tokens"] <= MAX_TOKENS
    assert 0 <= usage["prompt_tokens"] < 1000
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost"] >= 0
    if factor < 0:
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["cost"]) == (0, 0, 0)

    await settled(stack, account_id)
    record = await asyncio.to_thread(routing_record, stack, key, request_id)
    assert record["status"] == "settled"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert 0 <= record["cost"] <= 0.001  # never more than the account held, never negative
    assert record["usage_discrepancy"] is not None
    assert "reported" in record["usage_discrepancy"]
    [attempt] = record["attempts"]
    assert attempt["completion_tokens"] == (12 * 1000 if factor > 0 else 0)  # what the hoster said (never < 0)

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}) as client:
        credits = (await client.get(f"{stack.config.api_base}/credits")).json()
    assert credits["balance"] == pytest.approx(0.001 - record["cost"])  # charged the bounded cost, nothing more

    after = await hoster(stack)
    assert after.usage_discrepancies == before.usage_discrepancies + 1
    assert after.trust < before.trust
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_completion_tokens_are_never_billed_past_what_the_relayed_text_can_hold(
    stack: Stack, stream: bool
) -> None:
    """Within max_tokens, but more tokens than the text the client got: a token is at least a byte."""
    account_id, key = stack.create_account(credits="1")
    body: dict[str, Any] = {
        "model": DEMO_MODEL, "messages": [{"role": "user", "content": "count the waves"}], "max_tokens": 4000,
        "simulator": {"usage_factor": 50},
    }  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.config.api_base, headers=headers, timeout=30) as client:
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/chat/completions", json=body) as response:
                chunks = [orjson.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            [usage] = [c["usage"] for c in chunks if c.get("usage")]
        else:
            response = await client.post("/chat/completions", json=body)
            text = response.json()["choices"][0]["message"]["content"]
            usage = response.json()["usage"]
    relayed = len(text.encode())
    assert 0 < relayed + 1 < 12 * 50  # the claim (600) is past the text, and within max_tokens
    assert usage["completion_tokens"] == relayed + 1
    await settled(stack, account_id)
    record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
    assert record["completion_tokens"] == relayed + 1
    assert f"{relayed} bytes of text reached the client" in record["usage_discrepancy"]


async def test_n_choices_are_reserved_and_charged_at_most_the_reservation_for_all_of_them(stack: Stack) -> None:
    """``n: 4`` reserves four choices' completion limit; a hoster claiming far more is charged no more than
    that reservation, and four choices' worth of text is billed in full."""
    account_id, key = stack.create_account(credits="1")
    body: dict[str, Any] = {
        "model": DEMO_MODEL, "messages": [{"role": "user", "content": "count the waves"}], "max_tokens": 5,
        "n": 4, "simulator": {"usage_factor": 1000},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"}) as client:
        response = await client.post("/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["choices"]) == 4
    assert answer["usage"]["completion_tokens"] <= 4 * 5
    await settled(stack, account_id)
    row = await reservation(stack, response.headers["x-request-id"])
    # The reservation priced four choices: the 20 completion tokens billed fit in it, with no scaling down.
    assert row["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert 0 < row["charged"] <= row["amount"]
    assert row["charged"] == round(answer["usage"]["cost"] * 1e6)
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}
