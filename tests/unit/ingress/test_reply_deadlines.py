"""The ingress holds the serving attempt to its deadlines itself: keepalives from a hoster that never answers,
or that stalls, do not keep a client waiting; a missed deadline is reported once and the abandoned attempt's
late frames are dropped."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from libs.contracts import frames
from libs.contracts.pricing import UsageBounds
from libs.contracts.routing import CancelReason
from services.ingress.gateway import Deadlines, ReplyStream, UsageGuard
from tests.unit.ingress.offers import announce, offer, reply


class Overdue(list[tuple[str, int, CancelReason]]):
    """The misses reported, and an event set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()

    def report(self, request_id: str, attempt: int, reason: CancelReason) -> None:
        self.append((request_id, attempt, reason))
        self.first.set()


def stream(idle_s: float = 5.0, ceiling_s: float = 5.0, stall_s: float = 0.3) -> tuple[ReplyStream, Overdue]:
    missed = Overdue()
    return ReplyStream("r", idle_s, Deadlines(ceiling_s, 0.05, stall_s, missed.report)), missed


async def keep_alive(replies: ReplyStream, attempt: int, every_s: float = 0.05) -> None:
    while True:
        replies.put(offer(attempt), frames.encode(frames.KEEPALIVE, attempt, -1))
        await asyncio.sleep(every_s)


async def test_keepalives_do_not_stretch_the_first_byte_deadline() -> None:
    replies, missed = stream()
    replies.arm(1, 200, reply(1))
    beating = asyncio.create_task(keep_alive(replies, 1))
    started = time.monotonic()
    try:
        waiting = asyncio.create_task(replies.next())
        await asyncio.wait_for(missed.first.wait(), 2)
        assert missed == [("r", 1, "first_byte_timeout")]
        assert 0.2 <= time.monotonic() - started < 0.5
        # The router fails over: attempt 2 is announced and answers; attempt 1's late chunk is dropped.
        replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"late"))
        replies.put_control(announce(2, hoster_id="h2", model="m"))
        replies.put(offer(2), frames.encode(frames.CHUNK, 2, 0, b"fresh"))
        assert (await waiting).kind == frames.ATTEMPT
        assert (await replies.next()).body == b"fresh"
    finally:
        beating.cancel()


async def test_the_abandoned_attempt_cannot_keep_the_request_alive() -> None:
    replies, missed = stream(idle_s=0.4)
    replies.arm(1, 100, reply(1))
    beating = asyncio.create_task(keep_alive(replies, 1))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await replies.next()  # nothing came from the router after the miss: the idle timeout ends it
    finally:
        beating.cancel()
    assert missed == [("r", 1, "first_byte_timeout")]
    assert time.monotonic() - started < 1.0


async def test_a_stream_that_stalls_between_chunks_is_reported_stalled() -> None:
    replies, missed = stream(stall_s=0.2)
    replies.arm(1, 1000, reply(1))
    replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"one"))
    assert (await replies.next()).body == b"one"
    beating = asyncio.create_task(keep_alive(replies, 1))
    try:
        waiting = asyncio.create_task(replies.next())
        await asyncio.sleep(0.4)
        assert missed == [("r", 1, "stalled")]
        report = b'{"http_status":500,"type":"server_error","code":"upstream_error","message":"broke off"}'
        replies.put_control(frames.encode(frames.ERROR, 1, -1, report))  # the router ends the request
        assert (await waiting).kind == frames.ERROR
    finally:
        beating.cancel()


async def test_a_forged_attempt_frame_cannot_lift_the_deadline_past_the_ceiling() -> None:
    replies, missed = stream(ceiling_s=0.2)
    replies.arm(1, 100, reply(1))
    replies.put_control(announce(2, first_byte_deadline_ms=1e9))
    assert (await replies.next()).kind == frames.ATTEMPT
    started = time.monotonic()
    waiting = asyncio.create_task(replies.next())
    await asyncio.wait_for(missed.first.wait(), 2)
    waiting.cancel()
    assert missed == [("r", 2, "first_byte_timeout")]
    assert time.monotonic() - started < 0.5


async def test_an_attempt_that_answers_in_time_is_never_reported() -> None:
    replies, missed = stream(stall_s=0.2)
    replies.arm(1, 200, reply(1))
    for i in range(5):
        await asyncio.sleep(0.1)
        replies.put(offer(1), frames.encode(frames.CHUNK, 1, i, b"x"))
        assert (await replies.next()).kind == frames.CHUNK
    replies.put(offer(1), frames.encode(frames.END, 1, 5))
    assert (await replies.next()).kind == frames.END
    assert missed == []


async def test_frames_that_carry_nothing_do_not_stretch_the_stall_deadline() -> None:
    """A hoster streaming empty chunks (``{"choices": []}``, a bare role) forever holds the client no longer
    than one that went silent: only content counts as progress, and only content counts as delivered."""
    replies, missed = stream(stall_s=0.2)
    replies.guard = UsageGuard(UsageBounds(100, 100), 0, 0, 0)
    replies.arm(1, 1000, reply(1))
    content = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "one"}}]})
    replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, content))
    assert (await replies.next()).kind == frames.CHUNK

    async def empty_chunks() -> None:
        empty = (b'{"choices": []}', b'{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}')
        for seq in range(1, 1000):
            replies.put(offer(1), frames.encode(frames.CHUNK, 1, seq, empty[seq % 2]))
            await asyncio.sleep(0.02)

    filling = asyncio.create_task(empty_chunks())
    try:

        async def drain() -> None:
            while True:
                await replies.next()

        reading = asyncio.create_task(drain())
        await asyncio.wait_for(missed.first.wait(), 5)
        reading.cancel()
    finally:
        filling.cancel()
    assert missed == [("r", 1, "stalled")]
    assert (replies.delivered_attempt, replies.delivered_frames) == (1, 1)
    assert replies.guard.text_bytes == 3


CLAIM = {"prompt_tokens": 40, "completion_tokens": 24, "total_tokens": 64}


@pytest.mark.parametrize("whole", [False, True])
async def test_an_answer_with_no_content_is_a_miss_and_the_next_hoster_answers(whole: bool) -> None:
    """A hoster that ends its stream having sent nothing but a usage claim, or whose whole answer holds none
    either, gave the client nothing: the client is shown no usage (nothing is billed), the miss is reported
    and the frame dropped, and the router's failover serves the answer."""
    replies, missed = stream()
    replies.guard = UsageGuard(UsageBounds(100, 100), 1_000_000, 1_000_000, 0)
    replies.arm(1, 1000, reply(1))
    claim = orjson.dumps({"choices": [], "usage": CLAIM})
    if whole:
        replies.put(offer(1), frames.encode(frames.COMPLETION, 1, 0, claim))
    else:
        replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, claim))
        replies.put(offer(1), frames.encode(frames.END, 1, 1))
        shown = await replies.next()
        assert orjson.loads(shown.body) == {"choices": []}
    waiting = asyncio.create_task(replies.next())
    await asyncio.wait_for(missed.first.wait(), 2)
    assert missed == [("r", 1, "empty_answer")]
    assert replies.delivered_frames == 0
    replies.put_control(announce(2, hoster_id="h2", model="m"))
    content = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
    replies.put(offer(2), frames.encode(frames.CHUNK, 2, 0, content))
    assert (await waiting).kind == frames.ATTEMPT
    assert (await replies.next()).body == content
    assert (replies.delivered_attempt, replies.delivered_frames) == (2, 1)


async def test_usage_after_content_is_shown_and_the_stream_ends() -> None:
    replies, missed = stream()
    replies.guard = UsageGuard(UsageBounds(100, 100), 1_000_000, 1_000_000, 0)
    replies.arm(1, 1000, reply(1))
    replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, orjson.dumps({"choices": [{"index": 0, "delta": {
        "content": "a fine answer"}}]})))  # fmt: skip
    replies.put(offer(1), frames.encode(frames.CHUNK, 1, 1, orjson.dumps({"choices": [], "usage": CLAIM})))
    replies.put(offer(1), frames.encode(frames.END, 1, 2))
    assert (await replies.next()).kind == frames.CHUNK
    assert orjson.loads((await replies.next()).body)["usage"]["prompt_tokens"] == 40
    assert (await replies.next()).kind == frames.END
    assert missed == []
