"""The router against hosters played by the test on a real nats-server: answers out of order, or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import frames
from libs.contracts.common import ErrorReport
from libs.contracts.routing import AttemptDispatch
from libs.platform.broker import ensure_streams
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.integration.request_path.scripted_hoster import ScriptedHoster
from tests.integration.request_path.test_router_adapter import send, until_terminal

pytestmark = pytest.mark.integration

MODEL = "scripted-model"


@pytest.fixture
async def platform(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    nc = await nats_server.connect("test-ingress")
    await ensure_streams(nc)
    spawn("router", "router", nats_server.env("router", "router"), "router ready")
    yield nc
    await nc.close()


async def test_an_outcome_that_overtakes_its_accept_still_ends_the_request(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """The accept and the outcome travel on two subscriptions: an attempt that fails at once may be heard
    failed before it is heard taken. The router must still act on the outcome, not leave the client waiting."""

    async def fail_then_accept(hoster: ScriptedHoster, dispatch: AttemptDispatch, _: Msg) -> None:
        await hoster.report(dispatch, "failed")
        await hoster.nc.flush()
        await hoster.accept(dispatch)

    hoster = await ScriptedHoster.join(nats_server, tmp_path, MODEL, fail_then_accept)
    try:
        await asyncio.sleep(0.7)  # a heartbeat reaches the router
        _, decision, queue = await send(platform, model=MODEL, stream=False)
        assert decision["hoster_id"] == hoster.hoster_id
        got = await until_terminal(queue, timeout_s=5)
        assert got[-1].kind == frames.ERROR
        assert ErrorReport.model_validate(orjson.loads(got[-1].body)).code == "all_hosters_failed"
    finally:
        await hoster.close()
