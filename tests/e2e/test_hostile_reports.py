"""Hosters that lie in what they are allowed to send, each holding only its own real credentials, against the
real services on a real nats-server and PostgreSQL: the network pays only on records it made itself (the
dispatch's prices, the ingress's count of what reached the client, its own verdicts), so a report's prices,
a report of work nobody received, a forged message id, frames of an offer the hoster declined and reports of
requests that never existed move no money, no answer and no trust."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.contracts.common import MAX_PRICE, Usage
from libs.contracts.hosters import LiveHoster, LiveHosters
from libs.contracts.pricing import cost_of, to_credits
from libs.contracts.routing import AttemptDispatch, AttemptFinished
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
from tests.e2e.records import routing_record
from tests.e2e.test_money import settled
from tests.integration.request_path.scripted_hoster import Script, ScriptedHoster
from tests.waits import until_stack_router_hears

pytestmark = pytest.mark.e2e

# Cheaper than the demo hoster (0.50 / 1.50 credits per million tokens): ``tier: cheapest`` tries it first.
PRICE = 100_000
FEE_BPS = 1000
BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "tier": "cheapest"}
CONTENT = "The sea is wide and deep and blue."  # 34 bytes: room for the 20 completion tokens claimed
CLAIM = Usage(prompt_tokens=30, completion_tokens=20, total_tokens=50)
HONEST = cost_of(30, 20, PRICE, PRICE, FEE_BPS)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    sim = SimulatorSpec("sim", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "6"})
    config = throwaway_config(
        simulators=[sim],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(sim.base_url)])],
        service_env={
            "CS_ROUTER_FIRST_BYTE_CEILING_MS": "1500",
            "CS_ROUTER_FIRST_BYTE_FLOOR_MS": "300",
            "CS_INGRESS_DEADLINE_GRACE_S": "0.3",
            "CS_ROUTER_DELIVERY_WAIT_S": "1.0",
            "CS_ROUTER_PROBE_INTERVAL_S": "0",  # no probes: the stats move on the tests' requests alone
            "CS_ROUTER_PLATFORM_FEE_BPS": str(FEE_BPS),
        },
    )
    running = Stack(config).start()
    yield running
    running.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    account_id, key = stack.create_account(credits="10")
    async with httpx.AsyncClient(
        base_url=stack.config.api_base, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        yield http, key, account_id
    await settled(stack, account_id)
    assert stack.computeshare("ledger", "check") == {"ok": True, "problems": []}


@pytest.fixture
async def platform(stack: Stack) -> AsyncIterator[Client]:
    nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-hostile-reports", "test")))
    yield nc
    await nc.close()


@contextlib.asynccontextmanager
async def hostile(stack: Stack, tmp_path: Path, script: Script, price: int = PRICE) -> AsyncIterator[ScriptedHoster]:
    hoster = await ScriptedHoster.connect(stack.nats_url, stack.auth, tmp_path, DEMO_MODEL, script, price=price)
    try:
        await until_stack_router_hears(stack, hoster.hoster_id)
        yield hoster
    finally:
        await hoster.close()


async def seen(platform: Client, hoster_id: str) -> LiveHoster:
    """The hoster as the router sees it now (trust, attempts, discrepancies, speed)."""
    reply = await platform.request(subjects.LIST_HOSTERS, b"", timeout=5)
    [found] = [h for h in LiveHosters.model_validate_json(reply.data).hosters if h.hoster_id == hoster_id]
    return found


def earned(stack: Stack, hoster_id: str) -> float:
    rows = stack.computeshare("hoster", "earnings", hoster_id)
    return sum(float(row["earned"]) for row in rows)


async def honest(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
    await hoster.accept(dispatch)
    await hoster.answer(dispatch, msg.reply, CONTENT, CLAIM)
    await hoster.report(dispatch, "succeeded", CLAIM, chunks_sent=1)


async def test_a_report_at_the_maximum_price_is_billed_at_the_advertised_price_and_flagged(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], platform: Client, tmp_path: Path
) -> None:
    http, key, account_id = client

    async def overcharge(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.answer(dispatch, msg.reply, CONTENT, CLAIM)
        await hoster.report(dispatch, "succeeded", CLAIM, chunks_sent=1, input_price=MAX_PRICE, output_price=MAX_PRICE)

    async with hostile(stack, tmp_path, overcharge) as liar:
        response = await http.post("/chat/completions", json=BODY)
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-hoster"] == liar.hoster_id
        assert response.json()["usage"]["cost"] == to_credits(HONEST.client)  # the client sees the honest price
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        assert record["cost"] == to_credits(HONEST.client)
        assert "reported prices" in (record["usage_discrepancy"] or "")
        assert earned(stack, liar.hoster_id) == to_credits(HONEST.hoster)
        assert (await seen(platform, liar.hoster_id)).usage_discrepancies == 1


@pytest.mark.parametrize("claimed", ["cancelled", "succeeded"])
async def test_a_hoster_that_sends_nothing_and_reports_work_is_paid_nothing_and_loses_trust(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], platform: Client, tmp_path: Path, claimed: str
) -> None:
    """It takes the attempt, sends no frame and reports at once, with usage at the request's bounds: the client
    is served by another hoster (at most a deadline later), pays for that answer alone, and the liar earns
    nothing and counts a failure each time, until it cools down."""
    http, key, account_id = client

    async def silent(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.accept(dispatch)
        bound = Usage(prompt_tokens=10_000, completion_tokens=dispatch.max_tokens, total_tokens=10_000)
        await hoster.report(dispatch, claimed, bound)  # type: ignore[arg-type]

    async with hostile(stack, tmp_path, silent) as liar:
        before = await seen(platform, liar.hoster_id)
        for stream in (False, True):
            async with http.stream("POST", "/chat/completions", json={**BODY, "stream": stream}) as response:
                body = await response.aread()
            assert response.status_code == 200, body
            assert response.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
            assert response.headers["x-computeshare-attempts"] == "2"
            await settled(stack, account_id)
            record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
            first, second = record["attempts"]
            assert (first["hoster_id"], first["outcome"]) == (liar.hoster_id, "failed")
            assert second["hoster_id"] == DEMO_HOSTER_ID
            demo = cost_of(second["prompt_tokens"], second["completion_tokens"], 500_000, 1_500_000, FEE_BPS)
            assert record["cost"] == to_credits(demo.client)
        assert earned(stack, liar.hoster_id) == 0
        after = await seen(platform, liar.hoster_id)
        assert after.attempts == before.attempts + 2
        assert after.trust < before.trust


async def test_a_forged_message_id_cannot_make_the_settlement_vanish(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path
) -> None:
    """The hoster publishes under the router's settlement message id (``<request>:finished``) before the
    router settles: its subjects are in no stream, so nothing of it is stored and the settlement is."""
    http, key, account_id = client
    forged: list[str] = []

    async def forge(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        for subject in (subjects.attempt_finished(hoster.hoster_id, dispatch.router_id), subjects.REQUEST_FINISHED):
            try:
                await hoster.nc.jetstream(timeout=0.5).publish(
                    subject, b"{}", headers={"Nats-Msg-Id": f"{dispatch.request_id}:finished"}
                )
            except Exception as exc:  # refused or unanswered: the point is that nothing was stored
                forged.append(type(exc).__name__)
        await honest(hoster, dispatch, msg)

    async with hostile(stack, tmp_path, forge) as liar:
        response = await http.post("/chat/completions", json=BODY)
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-hoster"] == liar.hoster_id
        assert len(forged) == 2
        await settled(stack, account_id)  # the real settlement arrived: no reservation left open
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        assert (record["status"], record["cost"]) == ("settled", to_credits(HONEST.client))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_declining_hosters_frames_never_reach_the_client(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], tmp_path: Path, stream: bool
) -> None:
    """It is offered the attempt first, declines, then answers on the offer's reply subject anyway (its
    response permission lets it), under its own attempt number and the next one, at once and while the next
    hoster serves: the client gets the serving hoster's answer whole, under that hoster's name."""
    http, key, _ = client

    async def decline_and_forge(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.decline(dispatch)

        async def forge() -> None:
            for _ in range(10):
                for attempt in (dispatch.attempt, dispatch.attempt + 1):
                    await hoster.answer(dispatch, msg.reply, "FORGED", CLAIM, attempt=attempt)
                    for seq in range(3):
                        await hoster.send_chunk(dispatch, msg.reply, seq, content="FORGED", attempt=attempt)
                await asyncio.sleep(0.02)

        hoster.spawn(forge())

    async with hostile(stack, tmp_path, decline_and_forge, price=0) as liar:
        async with http.stream("POST", "/chat/completions", json={**BODY, "stream": stream}) as response:
            body = await response.aread()
        assert response.status_code == 200, body
        assert b"FORGED" not in body
        assert response.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
        if stream:
            events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            text = "".join(
                (orjson.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1]
            )
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert len(text.split()) == 6  # the simulator's whole answer
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        assert [a["hoster_id"] for a in record["attempts"]] == [DEMO_HOSTER_ID]  # a declined offer is no attempt
        assert liar.attempts  # it was offered the request


async def test_fabricated_reports_leave_trust_and_speed_unchanged(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], platform: Client, tmp_path: Path
) -> None:
    """200 reports of successes nobody dispatched, fast and long, on the hoster's own subject, addressed to
    the router it learnt from a real dispatch: the router folds in only outcomes of its own dispatches."""
    http, _, account_id = client
    routers: list[str] = []

    async def learn(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        routers.append(dispatch.router_id)
        await honest(hoster, dispatch, msg)

    async with hostile(stack, tmp_path, learn) as liar:
        assert (await http.post("/chat/completions", json=BODY)).status_code == 200
        await settled(stack, account_id)
        before = await seen(platform, liar.hoster_id)
        assert before.attempts == 1
        for _ in range(200):
            fake = AttemptFinished(
                request_id=f"chatcmpl-{uuid.uuid4().hex}", attempt=1, router_id=routers[0], hoster_id=liar.hoster_id,
                adapter_id=liar.adapter_id, model=DEMO_MODEL, stream=True, outcome="succeeded",
                usage=Usage(prompt_tokens=10, completion_tokens=10_000, total_tokens=10_010), chunks_sent=100,
                input_price=PRICE, output_price=PRICE, ttft_ms=1.0, duration_ms=1.0, finished_at=0.0,
            )  # fmt: skip
            await liar.nc.publish(
                subjects.attempt_finished(liar.hoster_id, routers[0]), fake.model_dump_json().encode()
            )
        await liar.nc.flush()
        # A real request behind them, on the same subject: once it is counted, the fabrications were heard.
        assert (await http.post("/chat/completions", json=BODY)).status_code == 200
        await settled(stack, account_id)
        after = await seen(platform, liar.hoster_id)
        assert after.attempts == before.attempts + 1
        assert after.trust <= max(before.trust, 0.8)
        assert after.trust < 0.8  # not past trusted_only's bar on two real attempts
        assert after.tokens_per_s is None or after.tokens_per_s < 1e6


async def test_a_report_with_nan_is_refused_and_a_restarted_router_routes_as_before(
    stack: Stack, client: tuple[httpx.AsyncClient, str, str], platform: Client, tmp_path: Path
) -> None:
    """A report whose floats are NaN (written as JSON by hand: a stranger's agent need not use our models) is
    refused by validation: the attempt it claims is not billed (the claim never arrived), nothing of it
    reaches the stats, and a router restarted from its stored stats routes to that hoster as before."""
    http, key, account_id = client

    async def nan_report(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        await hoster.answer(dispatch, msg.reply, CONTENT, CLAIM)
        report = AttemptFinished(
            request_id=dispatch.request_id, attempt=dispatch.attempt, router_id=dispatch.router_id,
            hoster_id=hoster.hoster_id, adapter_id=hoster.adapter_id, model=dispatch.model, stream=False,
            outcome="succeeded", usage=CLAIM, chunks_sent=1, input_price=PRICE, output_price=PRICE,
            ttft_ms=1.0, duration_ms=1.0, finished_at=1.0,
        ).model_dump_json()  # fmt: skip
        poisoned = report.replace('"ttft_ms":1.0', '"ttft_ms":NaN').replace('"duration_ms":1.0', '"duration_ms":NaN')
        assert poisoned != report
        subject = subjects.attempt_finished(hoster.hoster_id, dispatch.router_id)
        await hoster.nc.publish(subject, poisoned.encode())

    async with hostile(stack, tmp_path, nan_report) as liar:
        response = await http.post("/chat/completions", json=BODY)
        assert response.status_code == 200, response.text
        assert response.headers["x-computeshare-hoster"] == liar.hoster_id
        await settled(stack, account_id)
        record = await asyncio.to_thread(routing_record, stack, key, response.headers["x-request-id"])
        [attempt] = record["attempts"]
        assert (attempt["outcome"], record["cost"]) == ("failed", 0)  # no valid claim: nothing billed
        assert earned(stack, liar.hoster_id) == 0
        await asyncio.to_thread(stack.restart, "router")
        await until_stack_router_hears(stack, liar.hoster_id)
        again = await http.post("/chat/completions", json=BODY)
        assert again.status_code == 200, again.text
        assert again.headers["x-computeshare-hoster"] == liar.hoster_id
        assert (await seen(platform, liar.hoster_id)).trust >= 0
