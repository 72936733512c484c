"""The one way every service connects to NATS: a faststream broker, plus the JetStream objects we own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, ServiceUnavailableError
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from libs.contracts import subjects
from libs.platform.telemetry import inject_headers


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


async def ensure_streams(nc: Client, replicas: int = 1) -> None:
    """Create (or update) the JetStream streams the services share; safe to call from every replica."""
    js = nc.jetstream()
    usage = StreamConfig(
        name=subjects.USAGE_STREAM,
        subjects=[subjects.ATTEMPT_FINISHED_ALL, subjects.REQUEST_FINISHED],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600,
        # Re-publishing the same event id within this window is dropped by the server (exactly-once publish).
        duplicate_window=120,
        num_replicas=replicas,
    )
    deadletter = StreamConfig(
        name=subjects.DEADLETTER_STREAM,
        subjects=[subjects.DEADLETTER_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600,
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
