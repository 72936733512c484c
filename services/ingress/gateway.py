"""The ingress's side of the bus: one reply subscription per process, demultiplexed per request."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, TypeAdapter

from libs.contracts import frames, subjects
from libs.contracts.billing import (
    CreditsQuery,
    CreditsReport,
    GenerationQuery,
    GenerationRecord,
    KeyInfo,
    UsageQuery,
    UsageReport,
    VerifyKey,
)
from libs.contracts.common import ErrorReport
from libs.contracts.hosters import ModelsListing
from libs.contracts.routing import (
    RequestCancelled,
    RouteAccepted,
    RouteDecision,
    RouteRejected,
    RouteRequest,
)
from libs.platform.telemetry import inject_headers

_DECISION: TypeAdapter[RouteAccepted | RouteRejected] = TypeAdapter(RouteDecision)


# Bytes a request's envelope (ids, routing, caller) may add to the client's body on its way to the hoster.
ENVELOPE_ROOM = 64 * 1024


class GatewayError(Exception):
    """The request cannot go on; ``report`` (with ``headers``) is what the client gets."""

    def __init__(self, report: ErrorReport, headers: dict[str, str] | None = None) -> None:
        super().__init__(report.message)
        self.report = report
        self.headers = headers or {}


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


class KeyCache:
    """Recent answers about API keys, by key hash, each trusted for ``ttl_s``."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, KeyInfo]] = {}

    def get(self, key_hash: str, now: float) -> KeyInfo | None:
        """The cached answer, unless it is older than the TTL."""
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] <= now:
            return None
        return hit[1]

    def put(self, key_hash: str, info: KeyInfo, now: float) -> None:
        """Remember an answer; a full cache starts over rather than grow without bound."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key_hash] = (now + self._ttl_s, info)


class Gateway:
    """Publishes requests to the router and collects their reply frames."""

    def __init__(
        self,
        ingress_id: str,
        route_timeout_s: float,
        idle_timeout_s: float,
        key_cache_s: float,
        logger: logging.Logger,
    ):
        self.ingress_id = ingress_id
        self._keys = KeyCache(key_cache_s)
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
    def max_body_bytes(self) -> int | None:
        """The largest request body that fits a NATS message of this server, leaving room for the envelope."""
        if self._nc is None or not self._nc.max_payload:
            return None
        return int(self._nc.max_payload) - ENVELOPE_ROOM

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
                subjects.ROUTE_REQUEST,
                request.model_dump_json().encode(),
                timeout=self._route_timeout_s,
                headers=inject_headers(),
            )
        except NoRespondersError:
            raise GatewayError(_unavailable("No router is available to route this request.", retry_after)) from None
        except (NatsTimeout, TimeoutError):
            raise GatewayError(_unavailable("The router did not answer in time.", retry_after)) from None
        decision = _DECISION.validate_json(reply.data)
        if isinstance(decision, RouteAccepted):
            return decision
        raise GatewayError(decision.error, decision.headers)

    async def list_models(self, retry_after: int) -> ModelsListing:
        """The models live on the network, as the router sees them."""
        if self._nc is None:
            raise GatewayError(_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(subjects.LIST_MODELS, b"", timeout=self._route_timeout_s)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise GatewayError(_unavailable("No router is available to list models.", retry_after)) from None
        return ModelsListing.model_validate_json(reply.data)

    async def verify_key(self, key_hash: str, retry_after: int) -> KeyInfo:
        """Who holds the key with this hash: from the cache, else from billing."""
        now = time.monotonic()
        cached = self._keys.get(key_hash, now)
        if cached is not None:
            return cached
        reply = await self._ask(subjects.VERIFY_KEY, VerifyKey(key_hash=key_hash), "check API keys", retry_after)
        info = KeyInfo.model_validate_json(reply)
        self._keys.put(key_hash, info, now)
        return info

    async def credits(self, account_id: str, retry_after: int) -> CreditsReport:
        """An account's balance, reservations, today's spend and cap."""
        reply = await self._ask(subjects.SHOW_CREDITS, CreditsQuery(account_id=account_id), "show credits", retry_after)
        return CreditsReport.model_validate_json(reply)

    async def usage(self, account_id: str, limit: int, retry_after: int) -> UsageReport:
        """An account's recent requests."""
        query = UsageQuery(account_id=account_id, limit=limit)
        return UsageReport.model_validate_json(await self._ask(subjects.LIST_USAGE, query, "list usage", retry_after))

    async def generation(self, request_id: str, key_id: str, retry_after: int) -> GenerationRecord | None:
        """The routing record of ``request_id`` if ``key_id`` made it."""
        query = GenerationQuery(request_id=request_id, key_id=key_id)
        reply = await self._ask(subjects.SHOW_GENERATION, query, "show generations", retry_after)
        return GenerationRecord.model_validate_json(reply) if reply.strip() not in (b"", b"null") else None

    async def _ask(self, subject: str, query: BaseModel, what: str, retry_after: int) -> bytes:
        """Request/reply to billing; a 503 ``GatewayError`` when it cannot answer."""
        if self._nc is None:
            raise GatewayError(_unavailable("The gateway is not connected to the network.", retry_after))
        try:
            reply = await self._nc.request(
                subject, query.model_dump_json().encode(), timeout=self._route_timeout_s, headers=inject_headers()
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise GatewayError(_unavailable(f"Billing is unavailable, so we cannot {what} now.", retry_after)) from None
        return bytes(reply.data)

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
