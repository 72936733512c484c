"""The web console's credentials (``console`` in ``service_creds``) against a real nats-server in operator
mode: it may ask billing and the router the management questions and read their answers on its own inbox;
the server refuses it everything else (admission, settlement, attempts, other inboxes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.platform.natsauth import service_creds
from tests.conftest import NatsTestServer
from tests.integration.nats.test_hoster_confinement import Hostile, collect

pytestmark = pytest.mark.integration


@pytest.fixture
async def platform(nats_server: NatsTestServer) -> AsyncIterator[Client]:
    nc = await nats_server.connect("platform")
    yield nc
    await nc.close()


@pytest.fixture
async def console(nats_server: NatsTestServer, tmp_path: Path) -> AsyncIterator[Hostile]:
    path = service_creds(nats_server.auth, tmp_path, "console", "console")
    client = Hostile(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        client.errors.append(str(exc))

    client.nc = await nats.connect(nats_server.url, user_credentials=str(path), inbox_prefix=subjects.CONSOLE_INBOX,
                                   error_cb=on_error, max_reconnect_attempts=0)  # fmt: skip
    yield client
    await client.nc.close()


async def test_the_console_asks_billing_and_the_router_and_hears_their_answers(
    console: Hostile, platform: Client
) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"answered": "' + msg.subject.encode() + b'"}')

    for subject in (subjects.VERIFY_MANAGEMENT_KEY, subjects.LIST_ACCOUNT_KEYS, subjects.SHOW_HOSTER):
        await platform.subscribe(subject, queue="billing", cb=answer)
    await platform.flush()
    for subject in (subjects.VERIFY_MANAGEMENT_KEY, subjects.LIST_ACCOUNT_KEYS, subjects.SHOW_HOSTER):
        reply = await console.nc.request(subject, b"{}", timeout=2)
        assert reply.data == b'{"answered": "' + subject.encode() + b'"}'
    assert console.errors == []


@pytest.mark.parametrize(
    "subject",
    [
        subjects.RESERVE_CREDITS,
        subjects.VERIFY_KEY,
        subjects.ROUTE_REQUEST,
        subjects.REQUEST_FINISHED,
        subjects.KEY_CHANGED,
        subjects.attempt_start("11111111-2222-4333-8444-555555555555"),
        "$JS.API.STREAM.LIST",
    ],
)
async def test_the_console_cannot_publish_anything_else(console: Hostile, platform: Client, subject: str) -> None:
    got = await collect(platform, subject)
    await console.nc.publish(subject, b"forged")
    assert await console.refused(f'publish to "{subject}"')
    await asyncio.sleep(0.1)
    assert got == []


@pytest.mark.parametrize("subject", ["_INBOX.>", subjects.reply_inbox("ingress-1"), subjects.KEY_CHANGED, ">"])
async def test_the_console_cannot_listen_outside_its_own_inbox(console: Hostile, subject: str) -> None:
    await console.nc.subscribe(subject)
    assert await console.refused(f'subscription to "{subject}"')
