"""Frames lost on the way (a gap in an attempt's sequence numbers) end the answer with an error instead of
passing a short answer off as whole; duplicates are dropped; each attempt numbers its frames afresh."""

from __future__ import annotations

import orjson

from libs.contracts import frames
from services.ingress.gateway import ReplyStream
from tests.unit.ingress.offers import announce, armed, offer


def replies() -> tuple[ReplyStream, list[str]]:
    lost: list[str] = []
    return armed(ReplyStream("r", 5.0, on_lost=lost.append)), lost


async def test_a_gap_ends_the_answer_with_an_error_and_stops_the_request() -> None:
    stream, lost = replies()
    for seq, body in ((0, b"a"), (2, b"c"), (3, b"d")):
        stream.put(offer(1), frames.encode(frames.CHUNK, 1, seq, body))
    stream.put(offer(1), frames.encode(frames.END, 1, 4))
    assert (await stream.next()).body == b"a"
    error = await stream.next()
    assert error.kind == frames.ERROR
    report = orjson.loads(error.body)
    assert (report["http_status"], report["code"]) == (502, "incomplete_response")
    assert lost == ["r"]
    assert stream.ready_frames() == []  # the rest of the attempt, its end included, is dropped


async def test_a_lost_end_is_a_gap_too_and_a_duplicate_is_dropped() -> None:
    stream, lost = replies()
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 1, b"b"))
    stream.put(offer(1), frames.encode(frames.END, 1, 2))
    assert [f.body for f in [await stream.next(), await stream.next()]] == [b"a", b"b"]
    assert (await stream.next()).kind == frames.END
    assert lost == []


async def test_a_non_stream_completion_is_frame_zero_and_a_failover_numbers_afresh() -> None:
    stream, lost = replies()
    stream.put(offer(1), frames.encode(frames.KEEPALIVE, 1, -1))
    stream.put_control(announce(2, hoster_id="h2", model="m"))
    stream.put(offer(2), frames.encode(frames.COMPLETION, 2, 0, b"{}"))
    assert (await stream.next()).kind == frames.ATTEMPT
    assert (await stream.next()).kind == frames.COMPLETION
    late = armed(ReplyStream("s", 5.0, on_lost=lost.append))
    late.put(offer(1), frames.encode(frames.COMPLETION, 1, 1, b"{}"))  # frame 0 never came
    assert (await late.next()).kind == frames.ERROR
    assert lost == ["s"]


async def test_a_client_that_does_not_read_holds_no_more_than_the_bound_and_is_cut_off() -> None:
    lost: list[str] = []
    stream = armed(ReplyStream("r", 5.0, on_lost=lost.append, max_pending_bytes=64 * 1024))
    chunk = b"x" * 1000
    for seq in range(10_000):  # 10 MB arrive while nobody reads
        stream.put(offer(1), frames.encode(frames.CHUNK, 1, seq, chunk))
        assert stream._pending <= 64 * 1024
    assert stream._queue.qsize() == 1
    assert lost == ["r"]  # the request is stopped once
    error = await stream.next()
    assert error.kind == frames.ERROR
    assert orjson.loads(error.body)["code"] == "client_too_slow"


async def test_frames_read_as_they_come_never_reach_the_bound() -> None:
    stream, lost = replies()
    for seq in range(20_000):
        stream.put(offer(1), frames.encode(frames.CHUNK, 1, seq, b"x" * 1000))
        assert (await stream.next()).seq == seq
    assert lost == []


async def test_a_hoster_cannot_send_the_routers_frames_on_the_reply_subject() -> None:
    stream = armed(ReplyStream("r", idle_s=0.3))
    # A failover notice naming another hoster at other prices, and an error of the hoster's choosing: dropped.
    stream.put(
        offer(2), frames.encode(frames.ATTEMPT, 2, -1, orjson.dumps({"hoster_id": "impostor", "input_price": 10**12}))
    )
    stream.put(
        offer(1), frames.encode(frames.ERROR, 1, -1, b'{"http_status": 401, "type": "x", "code": null, "message": "m"}')
    )
    stream.put(offer(1), b"not a frame at all")
    # The same notice from the router (its control subject) is heard, and the attempt it names is read.
    stream.put_control(announce(2, hoster_id="h2", model="m"))
    stream.put(offer(2), frames.encode(frames.CHUNK, 2, 0, b"a"))
    assert (await stream.next()).kind == frames.ATTEMPT
    frame = await stream.next()
    assert (frame.kind, frame.attempt, frame.body) == (frames.CHUNK, 2, b"a")
    assert stream.attempt == 2


async def test_only_the_serving_offers_subject_is_read() -> None:
    """A hoster that declined an offer (or was abandoned) answers on its own offer's subject: never read,
    whatever its frames say; the hoster that took the next offer is read once the router names it, even if its
    first frames overtook the notice."""
    stream, _lost = replies()
    stream.put("1.other-token", frames.encode(frames.COMPLETION, 1, 0, b'{"forged": true}'))  # a declined offer
    stream.put(offer(3), frames.encode(frames.CHUNK, 3, 0, b"early"))  # before its notice
    stream.put_control(announce(3, hoster_id="h3", model="m"))
    stream.put(offer(2), frames.encode(frames.COMPLETION, 2, 0, b'{"forged": true}'))  # an older offer's
    stream.put(offer(3), frames.encode(frames.END, 3, 1))
    assert (await stream.next()).kind == frames.ATTEMPT
    assert [(f.kind, f.body) for f in [await stream.next(), await stream.next()]] == [
        (frames.CHUNK, b"early"),
        (frames.END, b""),
    ]
    assert (stream.delivered_attempt, stream.delivered_frames) == (3, 1)


async def test_a_failover_notice_after_content_ends_the_answer_rather_than_mixing_two() -> None:
    stream, lost = replies()
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 0, b"a"))
    stream.put_control(announce(2, hoster_id="h2", model="m"))
    assert (await stream.next()).body == b"a"
    error = await stream.next()
    assert (error.kind, orjson.loads(error.body)["code"]) == (frames.ERROR, "upstream_error")
    assert lost == ["r"]
