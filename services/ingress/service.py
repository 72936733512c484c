"""What the ingress writes to clients: SSE events and error bodies, from reply frames. No I/O here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from libs.contracts import errors, frames
from libs.contracts.billing import KeyReport
from libs.contracts.common import ErrorReport
from libs.contracts.openai import error_body
from libs.contracts.pricing import to_credits
from services.ingress.gateway import ReplyStream

DONE = b"data: [DONE]\n\n"


def error_report(frame_body: bytes) -> ErrorReport:
    """The error an ERROR frame carries."""
    return ErrorReport.model_validate_json(frame_body)


def error_response_body(report: ErrorReport) -> bytes:
    """The OpenAI error envelope for ``report``."""
    return error_body(report.message, report.type, report.code, report.param)


def error_event(report: ErrorReport) -> bytes:
    """An SSE event the OpenAI SDKs raise as an API error, as OpenAI sends one mid-stream."""
    return b"data: " + error_response_body(report) + b"\n\n"


def idle_report(retry_after: int) -> ErrorReport:
    """What the client gets when its request's reply subject went silent."""
    return errors.hoster_stopped_responding(retry_after)


async def first_answer(replies: ReplyStream, headers: dict[str, str]) -> frames.Frame:
    """The first frame that answers the client. Failover notices before it say which hoster serves now; they
    update the ``x-computeshare-hoster`` and ``x-computeshare-attempts`` headers, which are sent with it."""
    frame = await replies.next()
    while frame.kind == frames.ATTEMPT:
        headers["x-computeshare-hoster"] = orjson.loads(frame.body)["hoster_id"]
        frame = await replies.next()
    # The attempts the router named (its notices come on the control subject): offers a hoster declined
    # have numbers too, but never served.
    headers["x-computeshare-attempts"] = str(max(replies.attempts, 1))
    return frame


class StreamOutcome:
    """How a stream ended, for the handler's bookkeeping after the response."""

    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = False


class ChatEvents:
    """How a chat or text completion's stream is written: each chunk one SSE ``data:`` event, an error as
    OpenAI sends one mid-stream, and always ``data: [DONE]`` at the end. ``sse_events`` takes another writer
    for another dialect (the Responses API's typed events)."""

    __slots__ = ()

    def start(self) -> bytes:
        """What goes out before the first frame: nothing."""
        return b""

    def chunks(self, body: bytes) -> bytes:
        """A CHUNK frame's chunks (one per line) as SSE events."""
        return b"".join(b"data: " + chunk + b"\n\n" for chunk in frames.chunks(body))

    async def end(self) -> bytes:
        """The end of a stream that completed."""
        return DONE

    def fail(self, report: ErrorReport) -> bytes:
        """The end of a stream that failed."""
        return error_event(report) + DONE


CHAT_EVENTS = ChatEvents()


class StreamWriter(Protocol):
    """What ``sse_events`` writes a stream with (``ChatEvents`` is one)."""

    def start(self) -> bytes: ...
    def chunks(self, body: bytes) -> bytes: ...
    async def end(self) -> bytes: ...
    def fail(self, report: ErrorReport) -> bytes: ...


async def sse_events(
    first: frames.Frame,
    replies: ReplyStream,
    outcome: StreamOutcome,
    retry_after: int,
    writer: StreamWriter = CHAT_EVENTS,
) -> AsyncIterator[bytes]:
    """SSE bytes from the first frame on, written by ``writer``: chunks as they come (frames already queued go
    out in one write), a failure if the request fails midway or goes idle, the end once it ends. ``outcome``
    says whether it ended (an idle stream did not: its hoster is to be stopped)."""
    pending = [first]
    out = bytearray(writer.start())
    while True:
        for frame in pending:
            if frame.kind == frames.CHUNK:
                out += writer.chunks(frame.body)
            elif frame.kind == frames.END:
                outcome.completed = True
                yield bytes(out + await writer.end())
                return
            elif frame.kind == frames.ERROR:
                outcome.completed = True
                yield bytes(out + writer.fail(error_report(frame.body)))
                return
        if out:
            yield bytes(out)
            out = bytearray()
        try:
            pending = [await replies.next()]
        except TimeoutError:
            yield writer.fail(idle_report(retry_after))
            return
        pending += replies.ready_frames()


def models_page(models: list[dict[str, object]]) -> bytes:
    """``GET /v1/models`` body in OpenAI's list shape."""
    return orjson.dumps({"object": "list", "data": models})


# OpenRouter's ``rate_limit.requests`` for a key without a limit.
UNLIMITED = -1


def spendable(report: KeyReport) -> int:
    """What the key can still spend now (micro-credits): the account's balance (open holds already out of
    it), lowered to what is left of the daily cap when there is one."""
    room = max(0, report.balance)
    if report.daily_cap is not None:
        room = min(room, max(0, report.daily_cap - report.spent_today))
    return room


def key_page(report: KeyReport, management: bool = False) -> dict[str, Any]:
    """``GET /v1/key`` in OpenRouter's shape, amounts in credits. OpenRouter's per-key credit limit is our
    account's daily spend cap (``limit_reset`` "daily", ``null`` without one); ``limit_remaining`` is what the
    key can spend now (``spendable``: never ``null``, since the prepaid balance always bounds it); ``usage``
    and ``usage_daily`` / ``_weekly`` / ``_monthly`` are this key's settled charges (UTC days, weeks from
    Monday); ``rate_limit`` is the key's rpm (``-1``: none) over a one-minute window, with its tpm as
    ``tokens``. There is no free tier and no BYOK: every request is paid from prepaid credits. A management
    key is OpenRouter's provisioning key (``management``)."""
    cap = report.daily_cap
    return {
        "data": {
            "label": report.prefix,
            "limit": None if cap is None else to_credits(cap),
            "limit_reset": None if cap is None else "daily",
            "limit_remaining": to_credits(spendable(report)),
            "include_byok_in_limit": False,
            "usage": to_credits(report.usage),
            "usage_daily": to_credits(report.usage_daily),
            "usage_weekly": to_credits(report.usage_weekly),
            "usage_monthly": to_credits(report.usage_monthly),
            "byok_usage": 0,
            "byok_usage_daily": 0,
            "byok_usage_weekly": 0,
            "byok_usage_monthly": 0,
            "is_free_tier": False,
            "is_provisioning_key": management,
            "is_management_key": management,
            "expires_at": None,
            "rate_limit": {
                "requests": UNLIMITED if report.rpm is None else report.rpm,
                "tokens": UNLIMITED if report.tpm is None else report.tpm,
                "interval": "1m",
            },
        }
    }
