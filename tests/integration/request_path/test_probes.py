"""Probes: the router sends new hosters unbilled requests shaped like clients' and judges the answers, over a
real nats-server, with a real adapter and simulator, and with hosters played by the test (one answering
honestly in whichever mode it is asked, one lying about usage)."""

from __future__ import annotations

import asyncio
import json
import re
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
from libs.contracts.openai import ChatCompletionRequest
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


# A probe's offer subject, as a client request's first offer: ``ingress.reply.<ingress>.<request>.1.<token>``
# under an ingress instance id (``ingress-<host>-<pid>``; no ingress runs here, so a fresh one).
CLIENT_OFFER = re.compile(r"ingress\.reply\.ingress-[A-Za-z0-9_-]+-[0-9]+\.chatcmpl-[0-9a-f]{32}\.1\.[0-9a-f]{24}")


@pytest.fixture
async def platform(nats_server: NatsTestServer, spawn: Spawn) -> AsyncIterator[Client]:
    nc = await nats_server.connect("test-platform")
    await ensure_streams(nc)
    spawn("router", "router", {**nats_server.env("router", "router"), **PROBES}, "router ready")
    yield nc
    await nc.close()


async def offered(nc: Client) -> list[tuple[AttemptDispatch, str]]:
    """Every dispatch on the bus from now on, with the reply subject its message carried."""
    seen: list[tuple[AttemptDispatch, str]] = []

    async def on_dispatch(msg: Msg) -> None:
        seen.append((AttemptDispatch.model_validate_json(msg.data), msg.reply))

    await nc.subscribe(subjects.attempt_start("*"), cb=on_dispatch)
    await nc.flush()
    return seen


def assert_shaped_like_a_clients(dispatch: AttemptDispatch, reply: str) -> None:
    assert CLIENT_OFFER.fullmatch(reply), reply
    assert dispatch.reply_subject == reply
    assert reply.split(".")[3] == dispatch.request_id
    request = ChatCompletionRequest.model_validate(dispatch.body)  # the ingress would take it from a client
    assert request.model_extra == {}
    assert dispatch.stream == bool(request.stream)


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
    dispatches = await offered(platform)
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
    assert len(dispatches) >= NEW_ATTEMPTS
    for dispatch, reply in dispatches:
        assert_shaped_like_a_clients(dispatch, reply)


async def answer_in_the_mode_asked(
    hoster: ScriptedHoster, dispatch: AttemptDispatch, reply: str, text: str, usage: Usage
) -> None:
    """Answer as the adapter does: one completion for a non-stream request; chunks, the usage chunk when it
    was asked for, then the end, for a stream. The report claims ``usage`` either way."""
    if not dispatch.stream:
        await hoster.answer(dispatch, reply, text, usage)
    else:
        words = text.split(" ")
        for seq, word in enumerate(words):
            last = seq == len(words) - 1
            await hoster.send_chunk(dispatch, reply, seq, word if last else word + " ", "stop" if last else None)
        seq = len(words)
        if dispatch.include_usage:
            counts = usage.model_dump(exclude={"estimated"})
            chunk = {"id": dispatch.request_id, "object": "chat.completion.chunk", "created": dispatch.created,
                     "model": dispatch.model, "choices": [], "usage": counts}  # fmt: skip
            await hoster.nc.publish(reply, frames.encode(frames.CHUNK, dispatch.attempt, seq, orjson.dumps(chunk)))
            seq += 1
        await hoster.nc.publish(reply, frames.encode(frames.END, dispatch.attempt, seq))
    await hoster.report(dispatch, "succeeded", usage, chunks_sent=1)


async def test_a_hoster_answering_probes_honestly_streamed_or_not_gains_trust(
    nats_server: NatsTestServer, spawn: Spawn, tmp_path: Path
) -> None:
    nc = await nats_server.connect("test-platform")
    await ensure_streams(nc)
    # New for long enough that both modes are drawn (each probe is a stream with probability one half).
    probes = {**PROBES, "CS_ROUTER_PROBE_NEW_ATTEMPTS": "40"}
    spawn("router", "router", {**nats_server.env("router", "router"), **probes}, "router ready")
    dispatches = await offered(nc)
    both = asyncio.Event()

    async def honest(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        usage = Usage(prompt_tokens=12, completion_tokens=5, total_tokens=17)
        await answer_in_the_mode_asked(hoster, dispatch, msg.reply, "The sea is wide tonight.", usage)
        if {d.stream for d in hoster.attempts} == {True, False}:
            both.set()

    hoster = await ScriptedHoster.join(nats_server, tmp_path, "probe-model", honest)
    try:
        await asyncio.wait_for(both.wait(), timeout=30)
        report = await until_attempts(nc, hoster.hoster_id, len(hoster.attempts))
        assert not report.cooling  # every answer, streamed or not, passed the router's reading
        assert report.trust > 0.25
        for dispatch, reply in dispatches:
            assert_shaped_like_a_clients(dispatch, reply)
    finally:
        await hoster.close()
        await nc.close()


async def test_a_hoster_whose_answers_claim_more_tokens_than_their_text_holds_fails_its_probes(
    platform: Client, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    async def inflated(hoster: ScriptedHoster, dispatch: AttemptDispatch, msg: Msg) -> None:
        await hoster.accept(dispatch)
        usage = Usage(prompt_tokens=12, completion_tokens=16_000, total_tokens=16_012)
        # Whatever the probe asked (a stream's usage or not, which only the report then claims), the claim
        # is past what "The sea is wide." can hold.
        await answer_in_the_mode_asked(hoster, dispatch, msg.reply, "The sea is wide.", usage)

    liar = await ScriptedHoster.join(nats_server, tmp_path, "probe-model", inflated)
    try:
        # One probe, judged by the router alone (the hoster's report of a success counts for nothing).
        report = await until_attempts(platform, liar.hoster_id, 1)
        assert report.cooling  # out of rotation at once
        assert report.trust < 0.25
    finally:
        await liar.close()
