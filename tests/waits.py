"""Waits on what a test needs to be true (a router heard a hoster), instead of sleeps that guess how long
it takes."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from libs.contracts import subjects
from libs.contracts.hosters import LiveHosters, ModelsListing
from libs.devstack.stack import Stack

POLL_S = 0.05


async def until_router_lists(nc: Client, model: str, hosters: int = 1, timeout_s: float = 10.0) -> None:
    """Until a router lists ``model`` as served by at least ``hosters`` live hosters: their heartbeats were
    heard, so a request routes to them."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while True:
        try:
            reply = await nc.request(subjects.LIST_MODELS, b"", timeout=1.0)
            listed = {m.id: m.hosters for m in ModelsListing.model_validate_json(reply.data).models}
            seen = listed.get(model, 0)
            if seen >= hosters:
                return
        except (NoRespondersError, NatsTimeout):
            pass  # no router yet
        assert time.monotonic() < deadline, f"{model}: {seen} live hosters after {timeout_s} s, wanted {hosters}"
        await asyncio.sleep(POLL_S)


async def until_router_hears(nc: Client, hoster_id: str, timeout_s: float = 10.0) -> None:
    """Until a router counts hoster ``hoster_id`` live (its heartbeat was heard). ``nc`` may request the
    operator's hoster list (the console's or the platform's credentials)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=1.0)
            if any(h.hoster_id == hoster_id and h.live for h in LiveHosters.model_validate_json(reply.data).hosters):
                return
        except (NoRespondersError, NatsTimeout):
            pass  # no router yet
        assert time.monotonic() < deadline, f"no router heard hoster {hoster_id} within {timeout_s} s"
        await asyncio.sleep(POLL_S)


async def until_stack_router_hears(stack: Stack, hoster_id: str, timeout_s: float = 10.0) -> None:
    """``until_router_hears`` on a running ``Stack``, asked with the console's credentials (which may read the
    operator's hoster list)."""
    creds = stack.creds("test-observer", "console")
    nc = await nats.connect(stack.nats_url, user_credentials=str(creds), inbox_prefix=subjects.CONSOLE_INBOX)
    try:
        await until_router_hears(nc, hoster_id, timeout_s)
    finally:
        await nc.close()
