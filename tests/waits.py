"""Waits on what a test needs to be true (a router heard a hoster), instead of sleeps that guess how long
it takes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from libs.contracts import subjects
from libs.contracts.hosters import LiveHoster, LiveHosters, ModelsListing
from libs.devstack.stack import Stack

POLL_S = 0.05


async def _until(nc: Client, subject: str, holds: Callable[[bytes], bool], failure: Callable[[], str],
                 timeout_s: float) -> None:  # fmt: skip
    """Ask a router ``subject`` every ``POLL_S`` until ``holds`` its answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if holds((await nc.request(subject, b"", timeout=1.0)).data):
                return
        except (NoRespondersError, NatsTimeout):
            pass  # no router yet
        assert time.monotonic() < deadline, failure()
        await asyncio.sleep(POLL_S)


async def until_router_lists(nc: Client, model: str, hosters: int = 1, timeout_s: float = 10.0) -> None:
    """Until a router lists ``model`` as served by at least ``hosters`` live hosters: their heartbeats were
    heard, so a request routes to them."""
    seen = 0

    def holds(data: bytes) -> bool:
        nonlocal seen
        listed = {m.id: m.hosters for m in ModelsListing.model_validate_json(data).models}
        seen = listed.get(model, 0)
        return seen >= hosters

    await _until(nc, subjects.LIST_MODELS, holds,
                 lambda: f"{model}: {seen} live hosters after {timeout_s} s, wanted {hosters}", timeout_s)  # fmt: skip


async def until_router_has_reference(nc: Client, model: str, timeout_s: float = 15.0) -> None:
    """Until a router lists ``model`` with a reference hoster: it heard billing's designation (it refreshes
    the registered models every few seconds), so its spot checks of the model compare with the reference."""

    def holds(data: bytes) -> bool:
        return any(m.id == model and m.has_reference for m in ModelsListing.model_validate_json(data).models)

    await _until(nc, subjects.LIST_MODELS, holds, lambda: f"{model}: no reference after {timeout_s} s", timeout_s)


def _counts_live(data: bytes, hoster_id: str) -> bool:
    """Whether a router's hoster list (``LIST_HOSTERS``'s answer) counts ``hoster_id`` live."""
    return any(h.hoster_id == hoster_id and h.live for h in LiveHosters.model_validate_json(data).hosters)


@contextlib.asynccontextmanager
async def console_connection(stack: Stack) -> AsyncIterator[Client]:
    """A connection to ``stack``'s NATS with the console's credentials (which may read the operator's hoster
    list), closed after."""
    creds = stack.creds("test-observer", "console")
    nc = await nats.connect(stack.nats_url, user_credentials=str(creds), inbox_prefix=subjects.CONSOLE_INBOX)
    try:
        yield nc
    finally:
        await nc.close()


async def until_router_hears(nc: Client, hoster_id: str, timeout_s: float = 10.0) -> None:
    """Until a router counts hoster ``hoster_id`` live (its heartbeat was heard). ``nc`` may request the
    operator's hoster list (the console's or the platform's credentials)."""

    await _until(nc, subjects.LIST_HOSTERS, lambda data: _counts_live(data, hoster_id),
                 lambda: f"no router heard hoster {hoster_id} within {timeout_s} s", timeout_s)  # fmt: skip


async def until_stack_router_hears(stack: Stack, hoster_id: str, timeout_s: float = 10.0) -> None:
    """``until_router_hears`` on a running ``Stack``, asked with the console's credentials (which may read the
    operator's hoster list)."""
    async with console_connection(stack) as nc:
        await until_router_hears(nc, hoster_id, timeout_s)


async def until_stack_hoster(
    stack: Stack, hoster_id: str, holds: Callable[[LiveHoster], bool], timeout_s: float = 15.0
) -> LiveHoster:
    """Until a router's view of hoster ``hoster_id`` ``holds`` (a settlement folded into the stats): that
    view. Asked with the console's credentials."""
    seen: list[LiveHoster] = []

    def check(data: bytes) -> bool:
        seen[:] = [h for h in LiveHosters.model_validate_json(data).hosters if h.hoster_id == hoster_id]
        return bool(seen) and holds(seen[0])

    async with console_connection(stack) as nc:
        await _until(nc, subjects.LIST_HOSTERS, check, lambda: f"hoster {hoster_id} still {seen} after {timeout_s} s",
                     timeout_s)  # fmt: skip
    return seen[0]


async def stack_hosters(stack: Stack) -> dict[str, LiveHoster]:
    """A router's view of every hoster it knows, by id, asked once with the console's credentials."""
    async with console_connection(stack) as nc:
        reply = await nc.request(subjects.LIST_HOSTERS, b"", timeout=5.0)
    return {h.hoster_id: h for h in LiveHosters.model_validate_json(reply.data).hosters}


async def until_stack_router_forgets(stack: Stack, hoster_id: str, timeout_s: float = 15.0) -> None:
    """Until a router no longer counts hoster ``hoster_id`` live (its heartbeats stopped for longer than the
    router's TTL): a request then finds nobody to route to. Asked with the console's credentials."""
    async with console_connection(stack) as nc:
        await _until(nc, subjects.LIST_HOSTERS, lambda data: not _counts_live(data, hoster_id),
                     lambda: f"a router still counts hoster {hoster_id} live after {timeout_s} s",
                     timeout_s)  # fmt: skip
