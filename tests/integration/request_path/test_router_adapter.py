"""Router and hoster adapter as processes on a real nats-server, driven the way the ingress drives them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import frames, subjects
from libs.contracts.common import ErrorReport
from libs.contracts.routing import (
    AttemptFinished,
    RequestCancelled,
    RouteRequest,
    RoutingPreferences,
)
from libs.devstack.processes import ManagedProcess, free_port
from libs.devstack.stack import DEMO_MODEL, demo_hoster
from libs.platform.ids import new_request_id
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.waits import until_router_lists

pytestmark = pytest.mark.integration


@dataclass
class Network:
    nc: Client
    adapter: ManagedProcess
    router: ManagedProcess
    simulator_port: int

    def simulator_stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.simulator_port}/stats", timeout=2) as response:
            stats: dict[str, int] = json.load(response)
            return stats


@pytest.fixture
async def network(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Network]:
    port = free_port()
    spawn(
        "simulator",
        "simulator",
        {"CS_SIMULATOR_PORT": str(port), "CS_SIMULATOR_REPLY_TOKENS": "6"},
        port=port,
    )
    router = spawn(
        "router", "router", {**nats_server.env("router", "router"), "CS_ROUTER_HOSTER_TTL_S": "1.5"}, "router ready"
    )
    hosters = json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")])
    adapter = spawn(
        "adapter", "hoster_adapter",
        {**nats_server.env("adapter", "hoster_adapter"), "CS_ADAPTER_HOSTERS": hosters,
         "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.3"},
        "hoster_adapter ready",
    )  # fmt: skip
    nc = await nats_server.connect("test-ingress")
    await until_router_lists(nc, DEMO_MODEL)
    yield Network(nc, adapter, router, port)
    await nc.close()


async def send(
    nc: Client, model: str = "demo-model", stream: bool = True, body: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any], asyncio.Queue[frames.Frame]]:
    """Subscribe a reply subject and its control subject, publish a route request; return the router's
    decision and the frames."""
    request_id = new_request_id()
    reply = subjects.reply_subject("test-ingress", request_id)
    queue: asyncio.Queue[frames.Frame] = asyncio.Queue()

    async def on_frame(msg: Msg) -> None:
        await queue.put(frames.decode(msg.data))

    await nc.subscribe(reply + ".>", cb=on_frame)  # every offer's subject
    await nc.subscribe(subjects.control_subject(reply), cb=on_frame)  # the router's notices and errors
    route = RouteRequest(
        request_id=request_id, reply_subject=reply, model=model, stream=stream, include_usage=False,
        created=int(time.time()), routing=RoutingPreferences(),
        body=body or {"model": model, "messages": [{"role": "user", "content": "hello there"}]},
    )  # fmt: skip
    decision = await nc.request(subjects.ROUTE_REQUEST, route.model_dump_json().encode(), timeout=5)
    return request_id, orjson.loads(decision.data), queue


async def until_terminal(queue: asyncio.Queue[frames.Frame], timeout_s: float = 10) -> list[frames.Frame]:
    got = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await queue.get()
            if frame.kind != frames.KEEPALIVE:
                got.append(frame)
            if frame.kind in (frames.END, frames.ERROR, frames.COMPLETION):
                return got


async def test_stream_chunks_arrive_in_sequence_with_the_gateway_id_then_end(network: Network) -> None:
    request_id, decision, queue = await send(network.nc)
    assert decision["status"] == "accepted"
    assert decision["hoster_id"] == demo_hoster("")["id"]
    got = await until_terminal(queue)
    assert got[-1].kind == frames.END
    chunks = got[:-1]
    assert [f.seq for f in chunks] == list(range(len(chunks)))
    parsed = [orjson.loads(chunk) for f in chunks for chunk in frames.chunks(f.body)]
    assert {p["id"] for p in parsed} == {request_id}
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in parsed)
    assert len(text.split()) == 6
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"


async def test_non_stream_gets_one_completion_with_usage(network: Network) -> None:
    request_id, _, queue = await send(network.nc, stream=False)
    [frame] = await until_terminal(queue)
    assert frame.kind == frames.COMPLETION
    body = orjson.loads(frame.body)
    assert body["id"] == request_id
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 6


async def test_unknown_model_is_rejected_with_404(network: Network) -> None:
    _, decision, _ = await send(network.nc, model="never-served")
    assert decision["status"] == "rejected"
    assert decision["error"]["http_status"] == 404
    assert decision["error"]["code"] == "model_not_found"


async def test_cancel_closes_the_upstream_within_a_second_and_bills_tokens_sent(network: Network) -> None:
    outcomes: asyncio.Queue[AttemptFinished] = asyncio.Queue()

    async def on_finished(msg: Msg) -> None:
        await outcomes.put(AttemptFinished.model_validate_json(msg.data))

    await network.nc.subscribe(subjects.ATTEMPT_FINISHED_ALL, cb=on_finished)
    slow = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}],
            "simulator": {"reply_tokens": 500, "tokens_per_second": 50}}  # fmt: skip
    request_id, _, queue = await send(network.nc, body=slow)
    received = 0
    async with asyncio.timeout(5):
        while received < 5:
            if (await queue.get()).kind == frames.CHUNK:
                received += 1
    assert network.simulator_stats()["active_streams"] == 1
    await network.nc.publish(
        subjects.REQUEST_CANCELLED, RequestCancelled(request_id=request_id).model_dump_json().encode()
    )
    cancelled_at = time.monotonic()
    event = await asyncio.wait_for(outcomes.get(), 2)
    assert event.request_id == request_id
    assert event.outcome == "cancelled"
    # Billed for what was generated, not for the 500 tokens asked for.
    assert 4 <= event.usage.completion_tokens < 100
    while network.simulator_stats()["active_streams"]:
        assert time.monotonic() - cancelled_at < 1.0, "upstream request still open a second after cancel"
        await asyncio.sleep(0.05)


async def test_adapter_killed_mid_request_gives_a_clean_error_and_then_503(network: Network) -> None:
    slow = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}],
            "simulator": {"reply_tokens": 500, "tokens_per_second": 20}}  # fmt: skip
    _, decision, queue = await send(network.nc, body=slow)
    assert decision["status"] == "accepted"
    killed_at = time.monotonic()
    network.adapter.signal(9)
    got = await until_terminal(queue, timeout_s=10)
    assert got[-1].kind == frames.ERROR
    report = ErrorReport.model_validate_json(got[-1].body)
    assert report.http_status == 503
    assert time.monotonic() - killed_at < 5
    _, after, _ = await send(network.nc)
    assert after["status"] == "rejected"
    assert after["error"]["http_status"] == 503
    assert after["error"]["retry_after"] == 5


async def test_router_restart_remembers_models_it_saw(
    network: Network, nats_server: NatsTestServer, spawn: Spawn
) -> None:
    network.adapter.stop()
    network.router.stop()
    spawn("router-2", "router", nats_server.env("router-2", "router"), "router ready")
    _, decision, _ = await send(network.nc)
    # Known from the JetStream bucket, not from a heartbeat: 503 (come back later), not 404.
    assert decision["error"]["http_status"] == 503
