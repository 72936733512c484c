"""The reply subjects of a test request's offers, as a router names them (``subjects.offer_subject``)."""

from __future__ import annotations

from typing import Any

import orjson

from libs.contracts import frames, subjects
from services.ingress.gateway import ReplyStream

REQUEST = "r"


def offer(attempt: int) -> str:
    """The offer part of attempt ``attempt``'s reply subject."""
    return f"{attempt}.token{attempt}"


def reply(attempt: int, request: str = REQUEST) -> str:
    """Attempt ``attempt``'s reply subject."""
    return subjects.offer_subject(subjects.reply_subject("ingress-1", request), attempt, f"token{attempt}")


def announce(attempt: int, **body: Any) -> bytes:
    """The router's failover notice naming attempt ``attempt`` (and its reply subject)."""
    return frames.encode(frames.ATTEMPT, attempt, -1, orjson.dumps({"reply_subject": reply(attempt), **body}))


def armed(stream: ReplyStream) -> ReplyStream:
    """``stream`` with attempt 1 serving, as after the route's answer."""
    stream.arm(1, None, reply(1, stream.request_id))
    return stream
