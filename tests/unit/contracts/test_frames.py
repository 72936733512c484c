from __future__ import annotations

import pytest

from libs.contracts import frames


def test_frame_round_trip_keeps_body_bytes_exactly() -> None:
    body = b'{"choices":[{"delta":{"content":"a\\nb: c"}}]}'
    data = frames.encode(frames.CHUNK, 2, 17, body)
    assert frames.decode(data) == frames.Frame(frames.CHUNK, 2, 17, body)


def test_keepalive_has_empty_body_and_negative_sequence() -> None:
    frame = frames.decode(frames.encode(frames.KEEPALIVE, 1, -1))
    assert (frame.kind, frame.attempt, frame.seq, frame.body) == (frames.KEEPALIVE, 1, -1, b"")


@pytest.mark.parametrize("data", [b"", b"c1:2", b"cx:1\n{}", b"c12\n{}"])
def test_malformed_frames_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any malformed frame is a ValueError
        frames.decode(data)
