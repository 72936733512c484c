"""A router starting over what its buckets hold, on a real nats-server: stats stored with nulls where numbers
were (what orjson writes for the NaN a hoster once reported), and records no router writes, never stop it
from starting nor from routing to the hoster they describe."""

from __future__ import annotations

import json

import orjson
import pytest
from nats.aio.client import Client

from libs.contracts import frames, subjects
from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, demo_hoster
from services.router.store import kv_key
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn
from tests.integration.request_path.test_router_adapter import send, until_terminal
from tests.waits import until_router_lists

pytestmark = pytest.mark.integration

GONE_MODEL = "retired-model"
# The demo hoster's stats as a router stored them after a NaN time to first token reached them.
POISONED_STATS = {
    "hoster_id": DEMO_HOSTER_ID, "first_seen": None, "lifetime": 40, "outcomes": "o" * 40,
    "consecutive_failures": 0, "cooldown_until": None, "cooldown_s": 0.0, "last_attempt": None,
    "discrepancies": 0, "discrepant": "." * 40,
    "speed": {DEMO_MODEL: {"ttft": None, "tps": None, "samples": [None, 120.0, None, 95.0, None, None]}},
}  # fmt: skip


async def store(nc: Client, bucket: str, values: dict[str, bytes]) -> None:
    """Write ``values`` into ``bucket`` the way the router names its keys (created as the router creates it)."""
    kv = await nc.jetstream().create_key_value(bucket=bucket, history=1)
    for name, value in values.items():
        await kv.put(kv_key(name), value)


async def test_a_router_over_stored_nulls_and_garbage_starts_and_routes(
    nats_server: NatsTestServer, spawn: Spawn
) -> None:
    nc = await nats_server.connect("test-ingress")
    try:
        await store(nc, subjects.HOSTER_STATS_BUCKET, {
            DEMO_HOSTER_ID: orjson.dumps(POISONED_STATS),
            "not-json": b"\xff{",
            "a-list": b"[1, 2]",
        })  # fmt: skip
        await store(nc, subjects.MODELS_SEEN_BUCKET, {
            DEMO_MODEL: orjson.dumps({"model": DEMO_MODEL, "first_seen": 1_700_000_000}),
            GONE_MODEL: orjson.dumps({"model": GONE_MODEL, "first_seen": 1_700_000_000}),
            "broken": orjson.dumps({"model": None, "first_seen": "yesterday"}),
            "not-json": b"\x00",
        })  # fmt: skip
        port = free_port()
        spawn("simulator", "simulator", {"CS_SIMULATOR_PORT": str(port), "CS_SIMULATOR_REPLY_TOKENS": "4"}, port=port)
        spawn("router", "router", nats_server.env("router", "router"), "router ready")
        spawn(
            "adapter", "hoster_adapter",
            {**nats_server.env("adapter", "hoster_adapter"),
             "CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")]),
             "CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.3"},
            "hoster_adapter ready",
        )  # fmt: skip
        await until_router_lists(nc, DEMO_MODEL)
        for stream in (True, False):
            _, decision, queue = await send(nc, stream=stream)
            assert decision["status"] == "accepted", decision
            assert decision["hoster_id"] == DEMO_HOSTER_ID
            assert (await until_terminal(queue))[-1].kind in {frames.END, frames.COMPLETION}
        # The stored models were taken back: one no hoster serves now is gone for now (503), not unknown.
        _, gone, _ = await send(nc, model=GONE_MODEL)
        assert (gone["status"], gone["error"]["http_status"]) == ("rejected", 503), gone
    finally:
        await nc.close()
