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
    stream.put_control(frames.encode(frames.ATTEMPT, 2, -1, orjson.dumps({"hoster_id": "h2", "model": "m"})))
    stream.put(frames.encode(frames.COMPLETION, 2, 0, b"{}"))
    assert (await stream.next()).body == b"a"
    assert (await stream.next()).kind == frames.ATTEMPT
    assert (await stream.next()).kind == frames.COMPLETION
    late = ReplyStream("s", 5.0, on_lost=lost.append)
    late.put(frames.encode(frames.COMPLETION, 1, 1, b"{}"))  # frame 0 never came
    assert (await late.next()).kind == frames.ERROR
    assert lost == ["s"]


async def test_a_client_that_does_not_read_holds_no_more_than_the_bound_and_is_cut_off() -> None:
    lost: list[str] = []
    stream = ReplyStream("r", 5.0, on_lost=lost.append, max_pending_bytes=64 * 1024)
    chunk = b"x" * 1000
    for seq in range(10_000):  # 10 MB arrive while nobody reads
        stream.put(frames.encode(frames.CHUNK, 1, seq, chunk))
        assert stream._pending <= 64 * 1024
    assert stream._queue.qsize() == 1
    assert lost == ["r"]  # the request is stopped once
    error = await stream.next()
    assert error.kind == frames.ERROR
    assert orjson.loads(error.body)["code"] == "client_too_slow"


async def test_frames_read_as_they_come_never_reach_the_bound() -> None:
    stream, lost = replies()
    for seq in range(20_000):
        stream.put(frames.encode(frames.CHUNK, 1, seq, b"x" * 1000))
        assert (await stream.next()).seq == seq
    assert lost == []


async def test_a_hoster_cannot_send_the_routers_frames_on_the_reply_subject() -> None:
    stream = ReplyStream("r", idle_s=0.3)
    # A failover notice naming another hoster at other prices, and an error of the hoster's choosing: dropped.
    stream.put(frames.encode(frames.ATTEMPT, 2, -1, orjson.dumps({"hoster_id": "impostor", "input_price": 10**12})))
    stream.put(frames.encode(frames.ERROR, 1, -1, b'{"http_status": 401, "type": "x", "code": null, "message": "m"}'))
    stream.put(b"not a frame at all")
    stream.put(frames.encode(frames.CHUNK, 1, 0, b"a"))
    frame = await stream.next()
    assert (frame.kind, frame.attempt, frame.body) == (frames.CHUNK, 1, b"a")
    assert stream.attempt == 1
    # The same notice from the router (its control subject) is heard.
    stream.put_control(frames.encode(frames.ATTEMPT, 2, -1, orjson.dumps({"hoster_id": "h2", "model": "m"})))
    assert (await stream.next()).kind == frames.ATTEMPT
    assert stream.attempt == 2
