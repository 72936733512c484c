"""The adapter's deadlines and limits, driven over a real nats-server the way a router drives it: the
dispatch's own first-byte deadline applies, capped by the adapter's ceiling; a stall, a response too long or
too large fails the attempt with an error naming it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.contracts.routing import AttemptAccepted, AttemptDispatch, AttemptFinished
from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_HOSTER_ID, demo_hoster
from libs.platform.broker import ensure_streams
from libs.platform.ids import new_request_id
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn

pytestmark = pytest.mark.integration

CEILING_S = 1.5


@pytest.fixture
async def hung(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    """An adapter whose only hoster accepts every request and never answers."""
    port = free_port()
    spawn("simulator", "simulator", {"CS_SIMULATOR_PORT": str(port), "CS_SIMULATOR_FAULT": "hang",
                                     "CS_SIMULATOR_FAULT_RATE": "1"}, port=port)  # fmt: skip
    spawn(
        "adapter", "hoster_adapter",
        {**nats_server.env("adapter", "hoster_adapter"), "CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")]),
         "CS_ADAPTER_FIRST_BYTE_TIMEOUT_S": str(CEILING_S)},
        "hoster_adapter ready",
    )  # fmt: skip
    nc = await nats_server.connect("test-router")
    await ensure_streams(nc)
    yield nc
    await nc.close()


async def run_attempt(
    nc: Client, deadline_ms: float | None, stream: bool, simulator: dict[str, Any] | None = None
) -> tuple[AttemptFinished, float]:
    """Dispatch one attempt straight to the adapter; its outcome and how long it took."""
    outcomes: asyncio.Queue[AttemptFinished] = asyncio.Queue()

    async def on_finished(msg: Msg) -> None:
        await outcomes.put(AttemptFinished.model_validate_json(msg.data))

    subscription = await nc.subscribe(subjects.attempt_finished(DEMO_HOSTER_ID, "test-router"), cb=on_finished)
    answer = await nc.subscribe(subjects.attempt_accepted(DEMO_HOSTER_ID, "test-router"))
    request_id = new_request_id()
    dispatch = AttemptDispatch(
        request_id=request_id, attempt=1, router_id="test-router",
        reply_subject=subjects.reply_subject("test-ingress", request_id), hoster_id=DEMO_HOSTER_ID,
        model="demo-model", upstream_model="demo-model", stream=stream, include_usage=False,
        created=int(time.time()), input_price=1, output_price=1, first_byte_deadline_ms=deadline_ms, max_tokens=4096,
        body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
              **({"simulator": simulator} if simulator else {})},
    )  # fmt: skip
    started = time.monotonic()
    start = subjects.attempt_start(DEMO_HOSTER_ID)
    await nc.publish(start, dispatch.model_dump_json().encode(), reply=dispatch.reply_subject)
    assert AttemptAccepted.model_validate_json((await answer.next_msg(timeout=5)).data).accepted
    event = await asyncio.wait_for(outcomes.get(), 10)
    await subscription.unsubscribe()
    await answer.unsubscribe()
    assert event.request_id == request_id
    return event, time.monotonic() - started


@pytest.mark.parametrize(
    ("deadline_ms", "expected_s"),
    [(300, 0.3), (None, CEILING_S), (60_000, CEILING_S)],
    ids=["the dispatch's own", "the ceiling by default", "never past the ceiling"],
)
async def test_a_silent_upstream_fails_the_attempt_at_its_first_byte_deadline(
    hung: Client, deadline_ms: float | None, expected_s: float
) -> None:
    for stream in (False, True):
        event, took = await run_attempt(hung, deadline_ms, stream)
        assert event.outcome == "failed"
        assert event.error is not None
        assert event.error.startswith("first_byte_timeout")
        assert (event.chunks_sent, event.client_error, event.upstream_status) == (0, False, None)
        assert expected_s <= took < expected_s + 1.0, took


@pytest.fixture
async def bounded(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    """An adapter with small limits in front of a well-behaved simulator (each request asks for its faults)."""
    port = free_port()
    spawn("simulator", "simulator", {"CS_SIMULATOR_PORT": str(port)}, port=port)
    spawn(
        "adapter", "hoster_adapter",
        {**nats_server.env("adapter", "hoster_adapter"), "CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")]),
         "CS_ADAPTER_STALL_TIMEOUT_S": "0.5", "CS_ADAPTER_MAX_ATTEMPT_DURATION_S": "1.5",
         "CS_ADAPTER_MAX_ATTEMPT_BYTES": str(64 * 1024)},
        "hoster_adapter ready",
    )  # fmt: skip
    nc = await nats_server.connect("test-router")
    await ensure_streams(nc)
    yield nc
    await nc.close()


@pytest.mark.parametrize(
    ("simulator", "error", "within_s"),
    [
        ({"fault": "stall", "fault_after_tokens": 2}, "stalled", (0.5, 1.5)),
        ({"reply_tokens": 60, "tokens_per_second": 20}, "attempt_too_long", (1.5, 2.5)),
        ({"reply_tokens": 2000}, "response_too_large", (0, 1.0)),
        ({"reply_tokens": 2}, None, (0, 1.0)),
    ],
    ids=["stall", "too long", "too large", "within every limit"],
)
async def test_an_attempt_past_a_limit_fails_naming_it(
    bounded: Client, simulator: dict[str, Any], error: str | None, within_s: tuple[float, float]
) -> None:
    for stream in (True, False):
        event, took = await run_attempt(bounded, None, stream, simulator)
        assert within_s[0] <= took < within_s[1], took
        if error is None:
            assert (event.outcome, event.error) == ("succeeded", None)
            continue
        assert event.outcome == "failed"
        assert event.error is not None
        assert event.error.startswith(error), event.error
