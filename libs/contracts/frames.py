"""Frames on a request's reply subject: the hot path from hoster adapter to ingress, plain bytes, no models.

A frame is one kind byte, the attempt number, ``:``, the frame's sequence number within the attempt, a
newline, then the body. A chunk frame's body is one or more complete ``chat.completion.chunk`` JSON objects,
one per line (JSON as encoded carries no raw newline), already carrying the gateway's id and model: the
adapter sends every chunk one read from the upstream gave it as one frame, so a fast stream costs a message
per read rather than per token, and the first token waits for nothing.
"""

from __future__ import annotations

from typing import NamedTuple

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
