"""Accounts, keys, credits, caps and rate limits through the public API, with real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import httpx
import openai
import pytest

from libs.contracts.pricing import cost_of
from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack

pytestmark = pytest.mark.e2e

# The demo hoster's prices (micro-credits per million tokens) and the router's default fee.
INPUT_PRICE, OUTPUT_PRICE, FEE_BPS = 500_000, 1_500_000, 1000
PROMPT = "x" * 400  # 100 tokens by the gateway's estimate, and by the simulator's count
MAX_TOKENS = 10
# Each request asks for exactly MAX_TOKENS, and the first token comes late enough that all requests are
# admitted (or refused) before any settles and frees what its charge did not use.
SLOW_EXACT = {"simulator": {"reply_tokens": MAX_TOKENS, "ttft_ms": 2500}}
# What one request is charged: 100 prompt tokens and MAX_TOKENS, as the simulator counts them.
CHARGE = cost_of(100, MAX_TOKENS, INPUT_PRICE, OUTPUT_PRICE, FEE_BPS).client


def body(**extra: object) -> dict[str, object]:
    return {"model": DEMO_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS, **extra}


def reserved_per_request(stack: Stack) -> int:
    """What one request of ``body(**SLOW_EXACT)`` reserves (its usage bounds priced: every byte of the body as
    a possible prompt token, MAX_TOKENS of completion), read from billing's table after one such request."""
    account_id, key = stack.create_account(credits="10")
    response = httpx.post(f"{urls(stack)[0]}/chat/completions", json=body(**SLOW_EXACT),
                          headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text

    async def amount() -> int:
        conn = await asyncpg.connect(stack.database_url)
        try:
            value = await conn.fetchval("SELECT amount FROM reservations WHERE account_id = $1", account_id)
        finally:
            await conn.close()
        assert isinstance(value, int)
        return value

    reserved = asyncio.run(amount())
    assert reserved >= CHARGE
    return reserved


def credits_for(requests: int, each: int) -> str:
    return str(Decimal(each * requests) / Decimal(1_000_000))


async def burst(urls: list[str], key: str, count: int, payload: dict[str, object]) -> list[httpx.Response]:
    """``count`` requests at once, spread over ``urls``."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/chat/completions", json=payload, headers={"authorization": f"Bearer {key}"}
                )
                for i in range(count)
            )
        )


async def settled(stack: Stack, account_id: str, timeout_s: float = 30) -> None:
    """Wait until every request of the account is recorded and settled: no open reservation, and no credit
    lease still open or still keeping credit for requests it admitted that billing has not recorded yet (a
    request admitted on a lease may be recorded only with its settlement)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while await conn.fetchval(
            """SELECT (SELECT count(*) FROM reservations WHERE account_id = $1 AND status = 'open')
                    + (SELECT count(*) FROM leases
                       WHERE account_id = $1 AND (status = 'open' OR granted - attached - released > 0))""",
            account_id,
        ):
            assert time.monotonic() < deadline, "reservations or leases still open"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def money_stack() -> Iterator[Stack]:
    running = build_stack(ingresses=2)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reserved(money_stack: Stack) -> int:
    return reserved_per_request(money_stack)


def urls(stack: Stack) -> list[str]:
    return [f"http://127.0.0.1:{port}/v1" for port in stack.config.ingress_ports]


async def test_credit_for_exactly_50_of_200_concurrent_requests_admits_exactly_50(
    money_stack: Stack, reserved: int
) -> None:
    account_id, key = money_stack.create_account(credits=credits_for(50, reserved))
    responses = await burst(urls(money_stack), key, 200, body(**SLOW_EXACT))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50, 402: 150}
    refused = next(r for r in responses if r.status_code == 402).json()["error"]
    assert refused["code"] == "insufficient_credits"
    assert "Insufficient credits" in refused["message"]
    await settled(money_stack, account_id)
    account = money_stack.computeshare("account", "show", account_id)
    assert account["balance"] >= 0
    assert account["reserved"] == 0
    assert money_stack.computeshare("ledger", "check") == {"ok": True, "problems": []}
    charged = [r.json()["usage"]["cost"] for r in responses if r.status_code == 200]
    assert sum(charged) == pytest.approx(50 * CHARGE / 1e6)
    assert account["balance"] == pytest.approx(50 * (reserved - CHARGE) / 1e6, abs=1e-9)


async def test_daily_cap_for_exactly_50_of_200_concurrent_requests_admits_exactly_50(
    money_stack: Stack, reserved: int
) -> None:
    account_id, key = money_stack.create_account(credits="1000")
    money_stack.computeshare("account", "set-limits", account_id, "--daily-cap", credits_for(50, reserved))
    responses = await burst(urls(money_stack), key, 200, body(**SLOW_EXACT))
    assert Counter(r.status_code for r in responses) == {200: 50, 402: 150}
    refused = next(r for r in responses if r.status_code == 402).json()["error"]
    assert refused["code"] == "daily_cap_reached"
    await settled(money_stack, account_id)
    account = money_stack.computeshare("account", "show", account_id)
    assert account["spent_today"] == pytest.approx(50 * CHARGE / 1e6)
    assert account["balance"] == pytest.approx(1000 - 50 * CHARGE / 1e6)
    assert money_stack.computeshare("ledger", "check")["ok"] is True


async def burst_in_one_minute(stack: Stack, rpm: int, count: int) -> list[httpx.Response]:
    """``burst`` of ``count`` requests with a new key limited to ``rpm``, inside one of billing's rate windows
    (whole minutes of the wall clock). A burst that straddled a minute's end is counted in two windows, so it is
    made again with another key: just after that minute's start, the next one is far from its end."""
    for _ in range(2):
        _, key = stack.create_account(credits="1000", rpm=rpm)
        started = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        responses = await burst(urls(stack), key, count, body())
        if dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) == started:
            return responses
    raise AssertionError("two bursts in a row straddled a minute's end")


async def test_rate_limit_of_30_per_minute_holds_across_two_ingress_replicas(money_stack: Stack) -> None:
    responses = await burst_in_one_minute(money_stack, rpm=30, count=50)
    assert Counter(r.status_code for r in responses) == {200: 30, 429: 20}
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["x-ratelimit-limit-requests"] == "30"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-reset-requests"].endswith("s")
    served = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in served)
    assert remaining == list(range(30))


async def test_revoked_key_fails_on_both_replicas_within_5_seconds(money_stack: Stack) -> None:
    _, key = money_stack.create_account(credits="10")
    clients = [openai.OpenAI(base_url=url, api_key=key, max_retries=0) for url in urls(money_stack)]
    for client in clients:  # both replicas have verified (and cached) the key
        client.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    key_id = money_stack.computeshare("key", "find", key)["key_id"]
    money_stack.computeshare("key", "revoke", key_id)
    revoked_at = time.monotonic()
    for client in clients:
        while (refusal := refused(client)) is None:
            assert time.monotonic() - revoked_at < 5, "revoked key still accepted after 5 s"
            await asyncio.sleep(0.1)
        assert "revoked" in refusal.message
    assert time.monotonic() - revoked_at < 5


def refused(client: openai.OpenAI) -> openai.AuthenticationError | None:
    """The 401 a request with the client's key gets, or ``None`` if it is served."""
    try:
        client.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    except openai.AuthenticationError as exc:
        return exc
    return None


async def test_missing_malformed_and_unknown_keys_get_401_in_the_openai_envelope(money_stack: Stack) -> None:
    base = urls(money_stack)[0]
    async with httpx.AsyncClient() as client:
        for headers in ({}, {"authorization": "Bearer sk-not-ours"}, {"authorization": "Bearer ngk_" + "a" * 43}):
            response = await client.post(f"{base}/chat/completions", json=body(), headers=headers)
            assert response.status_code == 401
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="ngk_" + "b" * 43, max_retries=0).chat.completions.create(
            model=DEMO_MODEL, messages=[{"role": "user", "content": "hi"}]
        )


async def test_usage_and_cost_in_responses_credits_and_usage_endpoints(money_stack: Stack) -> None:
    account_id, key = money_stack.create_account(credits="5")
    client = openai.OpenAI(base_url=urls(money_stack)[0], api_key=key, max_retries=0)
    completion = client.chat.completions.create(
        model=DEMO_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
    )
    assert completion.usage is not None
    expected = (
        cost_of(
            completion.usage.prompt_tokens, completion.usage.completion_tokens, INPUT_PRICE, OUTPUT_PRICE, FEE_BPS
        ).client
        / 1e6
    )
    assert completion.usage.model_extra is not None
    assert completion.usage.model_extra["cost"] == pytest.approx(expected)
    chunks = list(
        client.chat.completions.create(
            model=DEMO_MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_extra is not None
    assert chunks[-1].usage.model_extra["cost"] == pytest.approx(expected)
    await settled(money_stack, account_id)
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=urls(money_stack)[1], headers=auth) as http:
        credits = (await http.get("/credits")).json()
        assert credits["balance"] == pytest.approx(5 - 2 * expected)
        assert credits["reserved"] == 0
        assert credits["daily_cap"] is None
        usage = (await http.get("/usage", params={"limit": 5})).json()["data"]
        assert [u["id"] for u in usage][::-1] == [completion.id, chunks[0].id]
        assert all(u["status"] == "settled" and u["cost"] == pytest.approx(expected) for u in usage)
        assert (await http.get("/usage", params={"limit": 0})).status_code == 400
    earnings = money_stack.computeshare("hoster", "earnings")
    assert earnings[0]["earned"] > 0


async def test_billing_down_mid_request_charges_each_request_exactly_once_and_refuses_new_ones(
    fresh_stack: Stack,
) -> None:
    account_id, key = fresh_stack.create_account(credits="10")
    # A key with a rate limit is admitted by billing itself, request by request (its window is counted there);
    # the first key's requests are admitted against the credit lease its router holds.
    limited = fresh_stack.computeshare("key", "create", account_id, "--rpm", "1000")["key"]
    base = urls(fresh_stack)[0]
    slow = body(simulator={"reply_tokens": MAX_TOKENS, "ttft_ms": 3000})

    async def call(payload: dict[str, object], with_key: str = key) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(
                f"{base}/chat/completions", json=payload, headers={"authorization": f"Bearer {with_key}"}
            )

    in_flight = [asyncio.create_task(call(slow)) for _ in range(5)]
    conn = await asyncpg.connect(fresh_stack.database_url)
    try:
        deadline = time.monotonic() + 10
        while await conn.fetchval("SELECT count(*) FROM reservations WHERE account_id = $1", account_id) < 5:
            assert time.monotonic() < deadline, "requests were not admitted"
            await asyncio.sleep(0.05)
        fresh_stack.kill("billing")

        started = time.monotonic()
        refused = await call(body(), limited)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "Billing is unavailable" in refused.json()["error"]["message"]
        assert time.monotonic() - started < 10
        # Credit already held for this router: served while billing is away, charged once it is back.
        during = await call(body())
        assert during.status_code == 200

        finished = [*await asyncio.gather(*in_flight), during]
        assert [r.status_code for r in finished] == [200] * 6
        fresh_stack.start_service("billing", "billing", "billing ready")
        await settled(fresh_stack, account_id)
        rows = await conn.fetch(
            """SELECT r.request_id, r.charged, count(t.id) AS settlements
               FROM reservations r LEFT JOIN ledger_transactions t
                 ON t.request_id = r.request_id AND t.kind IN ('settle', 'expire')
               WHERE r.account_id = $1 GROUP BY r.request_id, r.charged""",
            account_id,
        )
    finally:
        await conn.close()
    assert len(rows) == 6
    assert all(row["settlements"] == 1 for row in rows)
    costs = {r.json()["id"]: r.json()["usage"]["cost"] for r in finished}
    assert {row["request_id"]: row["charged"] / 1e6 for row in rows} == pytest.approx(costs)
    account = fresh_stack.computeshare("account", "show", account_id)
    assert account["balance"] == pytest.approx(10 - sum(costs.values()))
    assert fresh_stack.computeshare("ledger", "check")["ok"] is True
