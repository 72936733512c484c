"""Frames lost on the way (a gap in an attempt's sequence numbers) end the answer with an error instead of
passing a short answer off as whole; duplicates are dropped; each attempt numbers its frames afresh."""

from __future__ import annotations

import orjson

from libs.contracts import frames
from services.ingress.gateway import ReplyStream


def replies() -> tuple[ReplyStream, list[str]]:
    lost: list[str] = []
    return ReplyStream("r", 5.0, on_lost=lost.append), lost


async def test_a_gap_ends_the_answer_with_an_error_and_stops_the_request() -> None:
    stream, lost = replies()
    for seq, body in ((0, b"a"), (2, b"c"), (3, b"d")):
        stream.put(frames.encode(frames.CHUNK, 1, seq, body))
    stream.put(frames.encode(frames.END, 1, 4))
    assert (await stream.next()).body == b"a"
    error = await stream.next()
    assert error.kind == frames.ERROR
    report = orjson.loads(error.body)
    assert (report["http_status"], report["code"]) == (502, "incomplete_response")
    assert lost == ["r"]
    assert stream.ready_frames() == []  # the rest of the attempt, its end included, is dropped


async def test_a_lost_end_is_a_gap_too_and_a_duplicate_is_dropped() -> None:
    stream, lost = replies()
    stream.put(frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put(frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put(frames.encode(frames.CHUNK, 1, 1, b"b"))
    stream.put(frames.encode(frames.END, 1, 2))
    assert [f.body for f in [await stream.next(), await stream.next()]] == [b"a", b"b"]
    assert (await stream.next()).kind == frames.END
    assert lost == []


async def test_a_non_stream_completion_is_frame_zero_and_a_failover_numbers_afresh() -> None:
    stream, lost = replies()
    stream.put(frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put(frames.encode(frames.ATTEMPT, 2, -1, orjson.dumps({"hoster_id": "h2", "model": "m"})))
    stream.put(frames.encode(frames.COMPLETION, 2, 0, b"{}"))
    assert (await stream.next()).body == b"a"
    assert (await stream.next()).kind == frames.ATTEMPT
    assert (await stream.next()).kind == frames.COMPLETION
    late = ReplyStream("s", 5.0, on_lost=lost.append)
    late.put(frames.encode(frames.COMPLETION, 1, 1, b"{}"))  # frame 0 never came
    assert (await late.next()).kind == frames.ERROR
    assert lost == ["s"]
