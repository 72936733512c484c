"""What the ingress writes to clients: SSE events and error bodies, from reply frames. No I/O here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from libs.contracts import frames
from libs.contracts.common import ErrorReport
from libs.contracts.openai import error_body
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
    return ErrorReport(
        http_status=503,
        type="server_error",
        code="hoster_unavailable",
        message="The hoster serving this request stopped responding.",
        retry_after=retry_after,
    )


async def first_answer(replies: ReplyStream, headers: dict[str, str]) -> frames.Frame:
    """The first frame that answers the client. Failover notices before it say which hoster serves now; they
    update the ``x-computeshare-hoster`` and ``x-computeshare-attempts`` headers, which are sent with it."""
    frame = await replies.next()
    while frame.kind == frames.ATTEMPT:
        headers["x-computeshare-hoster"] = orjson.loads(frame.body)["hoster_id"]
        frame = await replies.next()
    headers["x-computeshare-attempts"] = str(max(frame.attempt, 1))
    return frame


class StreamOutcome:
    """How a stream ended, for the handler's bookkeeping after the response."""

    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = False


async def sse_events(
    first: frames.Frame, replies: ReplyStream, outcome: StreamOutcome, retry_after: int
) -> AsyncIterator[bytes]:
    """SSE bytes from the first frame on: chunks as they come (frames already queued go out in one write),
    an error event if the request fails midway, and always ``data: [DONE]`` at the end."""
    pending = [first]
    while True:
        out = bytearray()
        for frame in pending:
            if frame.kind == frames.CHUNK:
                for chunk in frames.chunks(frame.body):
                    out += b"data: " + chunk + b"\n\n"
            elif frame.kind == frames.END:
                outcome.completed = True
                yield bytes(out + DONE)
                return
            elif frame.kind == frames.ERROR:
                outcome.completed = True
                yield bytes(out + error_event(error_report(frame.body)) + DONE)
                return
        if out:
            yield bytes(out)
        try:
            pending = [await replies.next()]
        except TimeoutError:
            yield error_event(idle_report(retry_after)) + DONE
            return
        pending += replies.ready_frames()


def models_page(models: list[dict[str, object]]) -> bytes:
    """``GET /v1/models`` body in OpenAI's list shape."""
    return orjson.dumps({"object": "list", "data": models})
