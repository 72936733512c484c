"""Frames on a request's reply subject: the hot path from hoster adapter to ingress, plain bytes, no models.

A frame is one kind byte, the attempt number, ``:``, the frame's sequence number within the attempt, a
newline, then the body. Chunk bodies are complete ``chat.completion.chunk`` JSON objects, already carrying
the gateway's id and model, so the ingress writes them to the client without parsing them.
"""

from __future__ import annotations

from typing import NamedTuple

CHUNK = ord("c")  # body: one chat.completion.chunk, ready to follow "data: "
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


def decode(data: bytes) -> Frame:
    """Split a frame from the wire; raises ``ValueError`` on anything malformed."""
    newline = data.index(b"\n")
    colon = data.index(b":", 1, newline)
    return Frame(data[0], int(data[1:colon]), int(data[colon + 1 : newline]), data[newline + 1 :])
