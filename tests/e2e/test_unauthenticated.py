"""Traffic with keys that are not ours is bounded before it reaches billing: 10,000 random well-formed keys
from one address within a minute cost billing a handful of lookups, the rest get 429 with Retry-After; a key
the ingress already knows keeps working from that address, and another address is not affected."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack

pytestmark = pytest.mark.e2e

BURST, PER_MINUTE, KEYS, CONCURRENCY = 20, 60, 10_000, 16
PROXY = "127.0.0.4"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = build_stack(
        CS_INGRESS_INVALID_KEYS_BURST=str(BURST),
        CS_INGRESS_INVALID_KEYS_PER_MINUTE=str(PER_MINUTE),
        CS_INGRESS_KEY_CACHE_S="5",
        # The load balancer in front, played by the tests from this address (any other peer is no proxy).
        CS_INGRESS_TRUSTED_PROXIES=PROXY,
    )
    yield running
    running.stop()


async def test_random_keys_from_one_address_are_refused_before_they_reach_billing(stack: Stack) -> None:
    _, good_key = stack.create_account(credits="1")
    base = stack.config.api_base
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    lookups: list[Msg] = []

    async def count(msg: Msg) -> None:
        lookups.append(msg)

    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-lookups", "test")))
    await nc.subscribe(subjects.VERIFY_KEY, cb=count)
    await nc.flush()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # A good key first: the ingress knows it (cached) before the address spends its budget.
            good = await client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {good_key}"})
            assert good.status_code == 200
            gate = asyncio.Semaphore(CONCURRENCY)

            async def attempt() -> httpx.Response:
                async with gate:
                    key = "ngk_" + secrets.token_urlsafe(32)
                    return await client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})

            started = time.monotonic()
            responses = await asyncio.gather(*(attempt() for _ in range(KEYS)))
            elapsed = time.monotonic() - started
            statuses = Counter(r.status_code for r in responses)
            assert elapsed < 60
            assert set(statuses) == {401, 429}, statuses
            # What billing was asked: the good key, the burst, and the refill over the run, nothing more.
            await nc.flush()
            allowed = 1 + BURST + PER_MINUTE * elapsed / 60 + 1
            assert len(lookups) <= allowed, (len(lookups), elapsed)
            assert statuses[401] <= BURST + PER_MINUTE * elapsed / 60 + 1
            limited = next(r for r in responses if r.status_code == 429)
            assert int(limited.headers["retry-after"]) >= 1
            error = limited.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "too_many_invalid_keys")

            # The known key still works from the same address.
            again = await client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {good_key}"})
            assert again.status_code == 200
        # Another address has a budget of its own.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=base, timeout=30, transport=transport) as other:
            key = "ngk_" + secrets.token_urlsafe(32)
            response = await other.post("/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 401
    finally:
        await nc.close()


async def spend_until_refused(client: httpx.AsyncClient, forwarded_for: Callable[[], str]) -> int:
    """Wrong keys until the ingress refuses them (429), each sent with ``X-Forwarded-For: forwarded_for()``;
    how many were looked up first (401)."""
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for looked_up in range(BURST * 3):
        headers = {"authorization": f"Bearer ngk_{secrets.token_urlsafe(32)}", "x-forwarded-for": forwarded_for()}
        response = await client.post("/chat/completions", json=body, headers=headers)
        if response.status_code == 429:
            return looked_up
        assert response.status_code == 401, response.text
    raise AssertionError(f"{BURST * 3} wrong keys and still no 429")


async def test_behind_a_trusted_proxy_each_client_has_its_own_budget_and_no_client_picks_one(stack: Stack) -> None:
    """Clients behind the load balancer (CS_INGRESS_TRUSTED_PROXIES) are budgeted by the address it forwards
    (the right-most one of X-Forwarded-For that is not the proxy's own), not all by the proxy's; a peer that is
    no trusted proxy is budgeted by its own address whatever X-Forwarded-For it writes."""
    base = stack.config.api_base
    proxy = httpx.AsyncHTTPTransport(local_address=PROXY)
    async with httpx.AsyncClient(base_url=base, timeout=30, transport=proxy) as balancer:
        # A client forwards a made-up address of its own; the proxy appends the one it saw.
        assert await spend_until_refused(balancer, lambda: "198.51.100.1, 203.0.113.7") >= BURST
        assert await spend_until_refused(balancer, lambda: "203.0.113.7") == 0  # that client's budget is spent
        assert await spend_until_refused(balancer, lambda: "203.0.113.8") >= BURST  # another's is whole
    # Loopback is no proxy here (uvicorn alone would believe it): a client there cannot get a fresh budget by
    # naming another address each time. (Another test may have spent this address's budget already.)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert await spend_until_refused(client, lambda: f"203.0.113.{secrets.randbelow(250)}") < BURST + 3
        assert await spend_until_refused(client, lambda: "203.0.113.9") == 0
