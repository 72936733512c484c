"""The ingress's side of the bus: one reply subscription per process, demultiplexed per request."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import TypeAdapter

from libs.contracts import frames, subjects
from libs.contracts.hosters import ModelsListing
from libs.contracts.routing import (
    ErrorReport,
    RequestCancelled,
    RouteAccepted,
    RouteDecision,
    RouteRejected,
    RouteRequest,
)

_DECISION: TypeAdapter[RouteAccepted | RouteRejected] = TypeAdapter(RouteDecision)


class GatewayError(Exception):
    """The request cannot go on; ``report`` is what the client gets."""

    def __init__(self, report: ErrorReport) -> None:
        super().__init__(report.message)
        self.report = report


class ReplyStream:
    """The frames of one request, in arrival order, with an idle timeout."""

    __slots__ = ("_idle_s", "_queue", "request_id")

    def __init__(self, request_id: str, idle_s: float) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._idle_s = idle_s

    def put(self, data: bytes) -> None:
        """Called by the subscription for each frame of this request."""
        self._queue.put_nowait(data)

    async def next(self) -> frames.Frame:
        """The next frame that means something to the client; keepalives only reset the idle timer."""
        while True:
            if self._queue.empty():
                async with asyncio.timeout(self._idle_s):
                    data = await self._queue.get()
            else:
                data = self._queue.get_nowait()
            frame = frames.decode(data)
            if frame.kind != frames.KEEPALIVE:
                return frame

    def ready_frames(self) -> list[frames.Frame]:
        """Frames already queued, without waiting: lets a stream write several at once."""
        ready = []
        while not self._queue.empty():
            frame = frames.decode(self._queue.get_nowait())
            if frame.kind != frames.KEEPALIVE:
                ready.append(frame)
        return ready


class Gateway:
    """Publishes requests to the router and collects their reply frames."""

    def __init__(
        self, ingress_id: str, route_timeout_s: float, idle_timeout_s: float, logger: logging.Logger
    ):
        self.ingress_id = ingress_id
        self._route_timeout_s = route_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._log = logger
        self._streams: dict[str, ReplyStream] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._prefix_len = len(subjects.reply_subject(ingress_id, ""))

    @property
    def ready(self) -> bool:
        """Connected to NATS and subscribed for replies."""
        return self._nc is not None and self._nc.is_connected and self._sub is not None

    @property
    def open_requests(self) -> int:
        """Requests waiting for or streaming their reply."""
        return len(self._streams)

    async def open(self, nc: Client) -> None:
        """Subscribe this instance's reply wildcard; from then on requests can be published."""
        self._nc = nc
        # Generous pending limits: a burst of chunks for many streams must not make us a slow consumer.
        self._sub = await nc.subscribe(
            subjects.reply_inbox(self.ingress_id),
            cb=self._on_reply,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )
        await nc.flush()

    async def close(self) -> None:
        """Unsubscribe and wait for background publishes."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)

    async def _on_reply(self, msg: Msg) -> None:
        stream = self._streams.get(msg.subject[self._prefix_len :])
        if stream is not None:
            stream.put(msg.data)

    def open_stream(self, request_id: str) -> ReplyStream:
        """Start collecting frames for ``request_id``; call before the request is published."""
        stream = self._streams[request_id] = ReplyStream(request_id, self._idle_timeout_s)
        return stream

    def close_stream(self, request_id: str) -> None:
        """Stop collecting frames for ``request_id``."""
        self._streams.pop(request_id, None)

    async def route(self, request: RouteRequest, retry_after: int) -> RouteAccepted:
        """Ask a router to route ``request``; raises ``GatewayError`` if rejected or unanswered."""
        if self._nc is None:
            raise GatewayError(_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(
                subjects.ROUTE_REQUEST, request.model_dump_json().encode(), timeout=self._route_timeout_s
            )
        except NoRespondersError:
            raise GatewayError(
                _unavailable("No router is available to route this request.", retry_after)
            ) from None
        except (NatsTimeout, TimeoutError):
            raise GatewayError(_unavailable("The router did not answer in time.", retry_after)) from None
        decision = _DECISION.validate_json(reply.data)
        if isinstance(decision, RouteAccepted):
            return decision
        raise GatewayError(decision.error)

    async def list_models(self, retry_after: int) -> ModelsListing:
        """The models live on the network, as the router sees them."""
        if self._nc is None:
            raise GatewayError(_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(subjects.LIST_MODELS, b"", timeout=self._route_timeout_s)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise GatewayError(_unavailable("No router is available to list models.", retry_after)) from None
        return ModelsListing.model_validate_json(reply.data)

    def cancel(self, request_id: str) -> None:
        """Tell adapters and routers the client left; safe to call from a cancelled task."""
        if self._nc is None:
            return
        data = RequestCancelled(request_id=request_id).model_dump_json().encode()
        task = asyncio.get_running_loop().create_task(self._nc.publish(subjects.REQUEST_CANCELLED, data))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _unavailable(message: str, retry_after: int) -> ErrorReport:
    return ErrorReport(
        http_status=503,
        type="server_error",
        code="service_unavailable",
        message=message,
        retry_after=retry_after,
    )
