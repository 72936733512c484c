"""How the adapter frames a stream: every chunk one read from the upstream gave it goes out as one frame (a
message per read, not per token), and a chunk that arrives alone goes out at once, not held for company."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from libs.contracts import frames, subjects
from libs.contracts.routing import AttemptAccepted, AttemptDispatch
from libs.devstack.stack import DEMO_HOSTER_ID, demo_hoster
from libs.platform.broker import ensure_streams
from libs.platform.ids import new_request_id
from tests.conftest import NatsTestServer
from tests.integration.conftest import Spawn

pytestmark = pytest.mark.integration

WORDS = ["one ", "two ", "three ", "four ", "five"]


def sse(word: str, finish: str | None = None) -> bytes:
    chunk = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


Writer = Callable[[asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def all_at_once(writer: asyncio.StreamWriter) -> None:
    writer.write(b"".join(sse(w, "stop" if i == len(WORDS) - 1 else None) for i, w in enumerate(WORDS)))
    writer.write(b"data: [DONE]\n\n")


async def one_at_a_time(writer: asyncio.StreamWriter) -> None:
    for i, word in enumerate(WORDS):
        writer.write(sse(word, "stop" if i == len(WORDS) - 1 else None))
        await writer.drain()
        await asyncio.sleep(0.15)
    writer.write(b"data: [DONE]\n\n")


async def upstream(write: Writer) -> tuple[asyncio.Server, int]:
    """An OpenAI-compatible upstream whose stream body ``write`` writes (HTTP/1.1, connection closed after)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        await writer.drain()
        await write(writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
def adapter_for(nats_server: NatsTestServer, spawn: Spawn) -> Callable[[int], Coroutine[Any, Any, Client]]:
    async def start(port: int) -> Client:
        env = {"CS_ADAPTER_HOSTERS": json.dumps([demo_hoster(f"http://127.0.0.1:{port}/v1")])}
        spawn("adapter", "hoster_adapter", {**nats_server.env("adapter", "hoster_adapter"), **env},
              "hoster_adapter ready")  # fmt: skip
        nc = await nats_server.connect("test-router")
        await ensure_streams(nc)
        return nc

    return start


async def frames_of_one_attempt(nc: Client) -> list[tuple[frames.Frame, float]]:
    """Offer one streaming attempt to the hoster; every frame on its reply subject up to END, each with the
    time it arrived."""
    request_id = new_request_id()
    reply = subjects.reply_subject("test-ingress", request_id)
    inbox = await nc.subscribe(reply)
    answers = await nc.subscribe(subjects.attempt_accepted(DEMO_HOSTER_ID, "test-router"))
    dispatch = AttemptDispatch(
        request_id=request_id, attempt=1, router_id="test-router", reply_subject=reply, hoster_id=DEMO_HOSTER_ID,
        model="demo-model", upstream_model="demo-model", stream=True, include_usage=False,
        created=int(time.time()), input_price=1, output_price=1, max_tokens=16,
        body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )  # fmt: skip
    await nc.publish(subjects.attempt_start(DEMO_HOSTER_ID), dispatch.model_dump_json().encode(), reply=reply)
    assert AttemptAccepted.model_validate_json((await answers.next_msg(timeout=5)).data).accepted
    got = []
    while True:
        frame = frames.decode((await inbox.next_msg(timeout=5)).data)
        if frame.kind != frames.KEEPALIVE:
            got.append((frame, time.monotonic()))
        if frame.kind in (frames.END, frames.ERROR):
            return got


def text_of(got: list[tuple[frames.Frame, float]]) -> list[str]:
    return [
        orjson.loads(chunk)["choices"][0]["delta"]["content"]
        for frame, _ in got
        if frame.kind == frames.CHUNK
        for chunk in frames.chunks(frame.body)
    ]


async def test_chunks_read_together_travel_as_one_frame(adapter_for: Callable[[int], Any]) -> None:
    server, port = await upstream(all_at_once)
    async with server:
        got = await frames_of_one_attempt(await adapter_for(port))
    assert [frame.kind for frame, _ in got] == [frames.CHUNK, frames.END]
    assert [frame.seq for frame, _ in got] == [0, 1]
    assert text_of(got) == WORDS


async def test_a_chunk_that_comes_alone_is_sent_at_once(adapter_for: Callable[[int], Any]) -> None:
    server, port = await upstream(one_at_a_time)
    async with server:
        got = await frames_of_one_attempt(await adapter_for(port))
    chunk_frames = [(frame, at) for frame, at in got if frame.kind == frames.CHUNK]
    assert len(chunk_frames) == len(WORDS)
    assert text_of(got) == WORDS
    assert [frame.seq for frame, _ in got] == list(range(len(WORDS) + 1))
    # Each arrived about when the upstream wrote it (0.15 s apart), not all together at the end.
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(chunk_frames)]
    assert min(gaps) > 0.08, gaps
