"""The one way every service connects to NATS: a faststream broker, plus the JetStream objects we own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, ServiceUnavailableError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from pydantic import BaseModel

from libs.contracts import subjects
from libs.platform.telemetry import context_from, inject_headers


def make_broker(
    nats_url: str,
    client_name: str,
    logger: logging.Logger,
    service: str,
    tracer_provider: TracerProvider | None,
    creds: Path | None = None,
    inbox_prefix: str = "_INBOX",
) -> NatsBroker:
    """A faststream NATS broker that reconnects forever, logs through our logging setup, traces each message
    it handles or sends (context in NATS headers) and counts them for Prometheus. ``creds`` is the process's
    credentials file; ``inbox_prefix`` the subject prefix its requests' replies come back under."""
    middlewares: list[Any] = [NatsPrometheusMiddleware(registry=REGISTRY, app_name=service)]
    if tracer_provider is not None:
        middlewares.insert(0, NatsTelemetryMiddleware(tracer_provider=tracer_provider))
    return NatsBroker(
        nats_url.split(","),
        name=client_name,
        logger=logger,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        ping_interval=10,
        graceful_timeout=10.0,
        # Requests are small; a large pending buffer only hides a stalled connection.
        pending_size=8 * 1024 * 1024,
        # faststream logs every message at this level: keep it out of INFO, the hot path would pay for it.
        log_level=logging.DEBUG,
        middlewares=middlewares,
        user_credentials=str(creds) if creds is not None else None,
        inbox_prefix=inbox_prefix,
    )


# The JetStream streams' caps (README, "Usage events and dead letters"). Only platform services write to them
# (hosters' outcome reports go to the router, in no stream). Neither ever drops what it holds to make room
# (``DiscardPolicy.NEW``): a full stream refuses the next event, whose publisher retries and then logs it
# lost, rather than silently losing an older one no consumer has read yet.
# USAGE keeps an event until billing's consumer of its subject acked it (interest retention), so its cap
# bounds the backlog billing has not read (about a million settlements), not history.
USAGE_MAX_BYTES = 1 << 30
# DEADLETTER keeps what billing gave up on for an operator, for 30 days or until replayed.
DEADLETTER_MAX_BYTES = 256 << 20
DEADLETTER_MAX_AGE_S = 30 * 24 * 3600
# The largest event either holds: NATS's default max_payload, the largest message a deployment of ours carries.
EVENT_MAX_BYTES = 1 << 20


async def ensure_streams(nc: Client, replicas: int = 1) -> None:
    """Create (or update) the JetStream streams the services share, capped; safe to call from every replica.
    One subject per consumer in each, so ``max_msgs_per_subject`` would be just another total: not set."""
    js = nc.jetstream()
    usage = StreamConfig(
        name=subjects.USAGE_STREAM,
        subjects=[subjects.REQUEST_FINISHED, subjects.LEASE_EVENTS_ALL],
        retention=RetentionPolicy.INTEREST,
        discard=DiscardPolicy.NEW,
        storage=StorageType.FILE,
        max_bytes=USAGE_MAX_BYTES,
        max_msg_size=EVENT_MAX_BYTES,
        # No age limit: an event billing has not read yet is never dropped for being old.
        max_age=0,
        # Re-publishing the same event id within this window is dropped by the server (exactly-once publish).
        duplicate_window=120,
        num_replicas=replicas,
    )
    deadletter = StreamConfig(
        name=subjects.DEADLETTER_STREAM,
        subjects=[subjects.DEADLETTER_ALL],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        storage=StorageType.FILE,
        max_bytes=DEADLETTER_MAX_BYTES,
        max_msg_size=EVENT_MAX_BYTES,
        max_age=DEADLETTER_MAX_AGE_S,
        duplicate_window=120,
        num_replicas=replicas,
    )
    for config in (usage, deadletter):
        await _ensure_stream(js, config)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    # A clustered stream can be without a leader for a few seconds (a node just died): wait it out.
    for delay in (0.5, 1, 2, 4, 8, 15, 30):
        try:
            try:
                await js.add_stream(config)
            except BadRequestError:
                await js.update_stream(config)
            return
        except (NatsTimeout, ServiceUnavailableError):
            await asyncio.sleep(delay)
    raise RuntimeError(f"JetStream stream {config.name} unavailable")


async def publish_durably(js: JetStreamContext, subject: str, data: bytes, msg_id: str, logger: logging.Logger) -> bool:
    """Publish to JetStream and wait for its ack, retrying for about ten seconds while the server is away.

    ``msg_id`` makes retries safe: the stream drops a second copy within its duplicate window.
    """
    last: Exception | None = None
    for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 5.0):
        await asyncio.sleep(delay)
        try:
            await js.publish(subject, data, headers=inject_headers({"Nats-Msg-Id": msg_id}), timeout=2.0)
            return True
        except Exception as exc:  # any failure (timeout, no stream, reconnecting) is retried the same way
            last = exc
    logger.error("event lost", extra={"subject": subject, "msg_id": msg_id, "error": repr(last)})
    return False


def connected(broker: NatsBroker) -> bool:
    """Whether the broker is connected to NATS now (readiness)."""
    try:
        return bool(broker.connection.is_connected)
    except Exception:  # not connected yet: faststream has no connection object to ask
        return False


class HotSubscriptions:
    """Subscriptions on the hot path, on the broker's nats-py connection directly.

    Each message is parsed into its contract and handed to its handler in a task of its own (at most
    ``max_concurrency`` at once per subscription); a handler's returned model is the reply when ``reply`` is
    set. Profiles showed faststream's per-message machinery (dependency injection, middlewares, a task group
    per message) to cost several times the work itself on the subjects every request crosses; the rest of
    a service's subjects stay faststream subscribers. A message that does not parse is logged and dropped.
    The trace context a message carries is continued when tracing is on.
    """

    def __init__(self, logger: logging.Logger, tracer_provider: TracerProvider | None) -> None:
        self._log = logger
        self._tracer = tracer_provider.get_tracer("computeshare.hot") if tracer_provider is not None else None
        self._wanted: list[tuple[str, str, Any, Any, bool, int]] = []
        self._durables: list[tuple[str, str, str, Any, int]] = []
        self._subscriptions: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(
        self,
        subject: str,
        contract: type[BaseModel],
        handler: Callable[[Any, Msg], Awaitable[BaseModel | None]],
        queue: str = "",
        reply: bool = False,
        max_concurrency: int = 1024,
    ) -> None:
        """Handle ``subject`` (in queue group ``queue``) once ``start`` runs."""
        self._wanted.append((subject, queue, contract, handler, reply, max_concurrency))

    def add_durable(
        self, subject: str, stream: str, durable: str, handler: Callable[[Msg], Awaitable[None]], max_concurrency: int
    ) -> None:
        """Consume ``subject`` of JetStream stream ``stream`` through the durable push consumer ``durable``
        (its deliver group is its name, so every replica shares it): ``handler`` gets each message and acks it
        (or not) itself."""
        self._durables.append((subject, stream, durable, handler, max_concurrency))

    async def start(self, nc: Client) -> None:
        """Subscribe everything added."""
        for subject, queue, contract, handler, reply, max_concurrency in self._wanted:
            gate = asyncio.Semaphore(max_concurrency)
            callback = functools.partial(self._on_message, contract, handler, reply, gate)
            self._subscriptions.append(await nc.subscribe(subject, queue=queue, cb=callback))
        js = nc.jetstream()
        for subject, stream, durable, handler, max_concurrency in self._durables:
            gate = asyncio.Semaphore(max_concurrency)
            callback = functools.partial(self._on_durable, handler, gate)
            # Binding looks the consumer up through the JetStream API, which a cluster without a leader for a
            # few seconds (a node just died, or restarts with us) times out: wait it out, as stream creation does.
            for delay in (0.5, 1, 2, 4, 8, 15, 30, 0):
                try:
                    subscription = await js.subscribe(
                        subject, queue=durable, durable=durable, stream=stream, cb=callback, manual_ack=True
                    )
                    break
                except (NatsTimeout, ServiceUnavailableError):
                    if not delay:
                        raise
                    self._log.warning("JetStream unavailable, retrying", extra={"durable": durable})
                    await asyncio.sleep(delay)
            self._subscriptions.append(subscription)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Unsubscribe, and let the handlers running finish (for ``grace_s`` at most)."""
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    async def _on_message(
        self, contract: type[BaseModel], handler: Any, reply: bool, gate: asyncio.Semaphore, msg: Msg
    ) -> None:
        try:
            event = contract.model_validate_json(msg.data)
        except ValueError as exc:
            self._log.warning("message dropped", extra={"subject": msg.subject, "error": str(exc)[:300]})
            return
        await gate.acquire()
        task = asyncio.create_task(self._handle(handler, event, msg, reply, gate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_durable(self, handler: Any, gate: asyncio.Semaphore, msg: Msg) -> None:
        await gate.acquire()
        task = asyncio.create_task(self._handle_durable(handler, msg, gate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_durable(self, handler: Any, msg: Msg, gate: asyncio.Semaphore) -> None:
        try:
            await handler(msg)
        except Exception:
            self._log.exception("handler failed", extra={"subject": msg.subject})
        finally:
            gate.release()

    async def _handle(self, handler: Any, event: BaseModel, msg: Msg, reply: bool, gate: asyncio.Semaphore) -> None:
        try:
            if self._tracer is None:
                answer = await handler(event, msg)
            else:
                with self._tracer.start_as_current_span(
                    f"{msg.subject} process", context=context_from(msg.headers), kind=SpanKind.CONSUMER
                ):
                    answer = await handler(event, msg)
            if reply and msg.reply and answer is not None:
                await msg.respond(answer.model_dump_json().encode())
        except Exception:
            self._log.exception("handler failed", extra={"subject": msg.subject})
        finally:
            gate.release()
