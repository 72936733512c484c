"""Probes: the router sends new hosters short unbilled requests and judges the answers, over a real
nats-server, with a real adapter and simulator, and with a hoster played by the test that lies about usage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import frames, subjects
from libs.contracts.common import Usage
from libs.contracts.hosters import LiveHoster, LiveHosters
from libs.contracts.routing import AttemptDispatch
from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_HOSTER_ID, demo_hoster
from libs.platform.broker import ensure_streams
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.integration.request_path.scripted_hoster import ScriptedHoster

pytestmark = pytest.mark.integration

NEW_ATTEMPTS = 3
PROBES = {"CS_ROUTER_PROBE_INTERVAL_S": "0.3", "CS_ROUTER_PROBE_NEW_ATTEMPTS": str(NEW_ATTEMPTS)}


@pytest.fixture
async def platform(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    nc = await nats_server.connect("test-platform")
    await ensure_streams(nc)
    spawn("router", "router", {**nats_server.env("router", "router"), **PROBES}, "router ready")
    yield nc
    await nc.close()


async def hoster_report(nc: Client, hoster_id: str) -> LiveHoster | None:
    reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=2)
    found = [h for h in LiveHosters.model_validate_json(reply.data).hosters if h.hoster_id == hoster_id]
    return found[0] if found else None


async def until_attempts(nc: Client, hoster_id: str, attempts: int, timeout_s: float = 10) -> LiveHoster:
    deadline = time.monotonic() + timeout_s
    while True:
        report = await hoster_report(nc, hoster_id)
        if report is not None and report.attempts >= attempts:
            return report
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.1)


async def test_a_new_hoster_is_probed_until_it_has_history_and_nobody_pays(
    platform: Client, nats_server: NatsTestServer, spawn: Spawn
) -> None:
    settlements: list[Msg] = []

    async def on_settlement(msg: Msg) -> None:
        settlements.append(msg)

    await platform.subscribe(subjects.REQUEST_FINISHED, cb=on_settlement)
    port = free_port()
    spawn("simulator", "simulator", {"CS_SIMULATOR_PORT": str(port), "CS_SIMULATOR_REPLY_TOKENS": "6"}, port=port)
    spawn(
        "adapter", "hoster_adapter",
        {**nats_server.env("adapter", "hoster_adapter"),
         "CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")]),
         "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.3"},
        "hoster_adapter ready",
    )  # fmt: skip
    report = await until_attempts(platform, DEMO_HOSTER_ID, NEW_ATTEMPTS)
    assert not report.cooling
    assert report.trust > 0.25  # above a new hoster's: clean answers are evidence
    await asyncio.sleep(1.5)  # no longer new, not idle: the probes stop
    after = await hoster_report(platform, DEMO_HOSTER_ID)
    assert after is not None
    assert after.attempts == report.attempts
    assert settlements == []  # no request was reserved or settled: unbilled


async def test_a_hoster_whose_answers_claim_more_tokens_than_their_text_holds_fails_its_probes(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    async def inflated(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        usage = {"prompt_tokens": 12, "completion_tokens": 16_000, "total_tokens": 16_012}
        completion = {"id": dispatch.request_id, "object": "chat.completion", "created": dispatch.created,
                      "model": dispatch.model, "usage": usage,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "The sea is wide."},
                                   "finish_reason": "stop"}]}  # fmt: skip
        await hoster.nc.publish(
            msg.reply, frames.encode(frames.COMPLETION, dispatch.attempt, 0, orjson.dumps(completion))
        )
        await hoster.report(
            dispatch, "succeeded", Usage(prompt_tokens=12, completion_tokens=16_000, total_tokens=16_012)
        )

    liar = await ScriptedHoster.join(nats_server, tmp_path, "probe-model", inflated)
    try:
        # One probe, judged by the router alone (the hoster's report of a success counts for nothing).
        report = await until_attempts(platform, liar.hoster_id, 1)
        assert report.cooling  # out of rotation at once
        assert report.trust < 0.25
    finally:
        await liar.close()
