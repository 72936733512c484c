from __future__ import annotations

import orjson
import pytest

from libs.contracts import frames
from libs.contracts.common import ErrorReport
from services.ingress.gateway import ReplyStream
from services.ingress.service import StreamOutcome, sse_events
from tests.unit.ingress.offers import armed, offer


async def collect(replies: ReplyStream, outcome: StreamOutcome) -> bytes:
    first = await replies.next()
    return b"".join([part async for part in sse_events(first, replies, outcome, retry_after=5)])


def chunk_frame(seq: int, text: str) -> bytes:
    body = orjson.dumps({"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]})
    return frames.encode(frames.CHUNK, 1, seq, body)


async def test_chunks_become_data_events_and_the_stream_ends_with_done() -> None:
    replies = armed(ReplyStream("r", idle_s=1))
    for i, text in enumerate(["a", "b"]):
        replies.put(offer(1), chunk_frame(i, text))
    replies.put(offer(1), frames.encode(frames.KEEPALIVE, 1, -1))
    replies.put(offer(1), frames.encode(frames.END, 1, 2))
    outcome = StreamOutcome()
    out = await collect(replies, outcome)
    events = out.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    assert [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-2]] == ["a", "b"]
    assert outcome.completed


async def test_a_failure_midway_sends_an_error_event_then_done() -> None:
    replies = armed(ReplyStream("r", idle_s=1))
    replies.put(offer(1), chunk_frame(0, "a"))
    report = ErrorReport(http_status=500, type="server_error", code="upstream_error", message="boom")
    replies.put_control(frames.encode(frames.ERROR, 1, -1, report.model_dump_json().encode()))
    outcome = StreamOutcome()
    events = (await collect(replies, outcome)).split(b"\n\n")
    assert orjson.loads(events[1][6:]) == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "upstream_error"}
    }
    assert events[2] == b"data: [DONE]"
    assert outcome.completed


async def test_silence_longer_than_the_idle_timeout_ends_the_stream_with_an_error() -> None:
    replies = armed(ReplyStream("r", idle_s=0.2))
    replies.put(offer(1), chunk_frame(0, "a"))
    outcome = StreamOutcome()
    events = (await collect(replies, outcome)).split(b"\n\n")
    assert orjson.loads(events[1][6:])["error"]["code"] == "hoster_unavailable"
    assert events[2] == b"data: [DONE]"
    assert not outcome.completed


async def test_next_times_out_on_keepalives_only_after_silence() -> None:
    replies = armed(ReplyStream("r", idle_s=0.2))
    replies.put(offer(1), frames.encode(frames.KEEPALIVE, 1, -1))
    with pytest.raises(TimeoutError):
        await replies.next()


async def test_a_frame_of_several_chunks_becomes_one_event_each() -> None:
    replies = armed(ReplyStream("r", idle_s=1))
    bodies = [orjson.dumps({"choices": [{"delta": {"content": text}}]}) for text in ("a", "b", "c")]
    replies.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"\n".join(bodies)))
    replies.put(offer(1), frames.encode(frames.END, 1, 1))
    events = (await collect(replies, StreamOutcome())).split(b"\n\n")
    assert events == [b"data: " + body for body in bodies] + [b"data: [DONE]", b""]
