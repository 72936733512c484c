"""Frames on a request's reply subject: the hot path from hoster adapter to ingress, plain bytes, no models.

A frame is one kind byte, the attempt number, ``:``, the frame's sequence number within the attempt, a
newline, then the body. A chunk frame's body is one or more complete ``chat.completion.chunk`` JSON objects,
one per line (JSON as encoded carries no raw newline), already carrying the gateway's id and model: the
adapter sends every chunk one read from the upstream gave it as one frame, so a fast stream costs a message
per read rather than per token, and the first token waits for nothing.
"""

from __future__ import annotations

from typing import NamedTuple

# The bounds of one attempt's reply stream, in one place: the adapter holds every attempt to them (its
# ``CS_ADAPTER_MAX_ATTEMPT_*`` may be set lower, never higher), and a hoster's NATS response permission is
# derived from them (``libs/platform/natsauth.py``), so the server holds an agent that ignores them too.
MAX_ATTEMPT_DURATION_S = 1800.0
MAX_ATTEMPT_BYTES = 256 << 20
# The shortest upstream line the adapter turns into a chunk frame: ``data:{}`` and its newline. Every chunk
# frame carries at least one (the chunks of one read share a frame), so an attempt's upstream bytes bound its
# chunk frames.
MIN_CHUNK_LINE_BYTES = 8
# Keepalives go out at most once per ``CS_ADAPTER_KEEPALIVE_INTERVAL_S``, which is at least this.
MIN_KEEPALIVE_INTERVAL_S = 1.0
# The most frames one attempt sends: its chunk frames, its keepalives, then a usage chunk and the frame that
# ends it (end, error or completion). About 33.6 million: a fast upstream for half an hour stays well inside.
MAX_ATTEMPT_FRAMES = (
    MAX_ATTEMPT_BYTES // MIN_CHUNK_LINE_BYTES + int(MAX_ATTEMPT_DURATION_S / MIN_KEEPALIVE_INTERVAL_S) + 2
)

CHUNK = ord("c")  # body: chat.completion.chunk objects, one per line, each ready to follow "data: "
COMPLETION = ord("r")  # body: one chat.completion (non-streaming requests), usage included
END = ord("e")  # body: empty; the stream is complete, write "data: [DONE]"
ERROR = ord("x")  # body: an ErrorReport as JSON; the request failed
KEEPALIVE = ord("k")  # body: empty; the attempt is alive while the upstream is slow
ATTEMPT = ord("a")  # body: {"hoster_id", "model"}; the router failed over, this attempt serves now


class Frame(NamedTuple):
    """One decoded frame."""

    kind: int
    attempt: int
    seq: int
    body: bytes


def encode(kind: int, attempt: int, seq: int, body: bytes = b"") -> bytes:
    """Frame ``body`` for the wire."""
    return b"%c%d:%d\n%s" % (kind, attempt, seq, body)


def chunks(body: bytes) -> list[bytes]:
    """The chunks of a chunk frame's body (blank lines skipped)."""
    return [line for line in body.split(b"\n") if line]


def decode(data: bytes) -> Frame:
    """Split a frame from the wire; raises ``ValueError`` on anything malformed."""
    newline = data.index(b"\n")
    colon = data.index(b":", 1, newline)
    return Frame(data[0], int(data[1:colon]), int(data[colon + 1 : newline]), data[newline + 1 :])
