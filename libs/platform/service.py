"""What every faststream service is made of, built one way: logging, an instance id, tracing, the broker,
the metrics server, and an app whose lifespan owns them around the service's own resources."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from logging import Logger
from typing import Any

from faststream import FastStream
from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider

from libs.platform.broker import connected, make_broker
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import MetricsServer
from libs.platform.settings import ServiceSettings
from libs.platform.telemetry import serving_telemetry, setup_tracing


@dataclass(frozen=True)
class ServiceKit:
    """The shared parts of one service process."""

    name: str
    instance_id: str
    logger: Logger
    broker: NatsBroker
    tracer_provider: TracerProvider | None
    metrics: MetricsServer
    settings: ServiceSettings


def service_kit(name: str, settings: ServiceSettings, inbox_prefix: str = "_INBOX") -> ServiceKit:
    """Logging, id, tracing, broker and metrics for service ``name``; nothing connects yet."""
    logger = setup_logging(name, settings.log_level, settings.log_format)
    own_id = instance_id(settings.instance_id, name)
    provider = setup_tracing(name, own_id)
    broker = make_broker(settings.nats_url, own_id, logger, name, provider, settings.nats_creds, inbox_prefix)
    metrics = MetricsServer(settings.metrics_port, lambda: connected(broker), logger)
    return ServiceKit(name, own_id, logger, broker, provider, metrics, settings)


def faststream_app(
    kit: ServiceKit,
    resources: Callable[[], AbstractAsyncContextManager[None]],
    on_shutdown: list[Callable[[], Awaitable[None]]] | None = None,
    ready_details: Callable[[], dict[str, Any]] | None = None,
) -> FastStream:
    """The service's app: telemetry around ``resources`` (the service's own lifespan), a ready line once the
    server has every subscription, and ``on_shutdown`` hooks that run while the broker is still connected."""

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with serving_telemetry(kit.metrics, kit.settings.metrics_port, kit.tracer_provider), resources():
            yield

    async def announce_ready() -> None:
        # The broker subscribed; flush (a round trip) so the server has the subscriptions too: from this line
        # on the service takes messages.
        await kit.broker.connection.flush()
        details = ready_details() if ready_details is not None else {}
        kit.logger.info(f"{kit.name} ready", extra={"instance_id": kit.instance_id, **details})

    return FastStream(
        kit.broker,
        logger=kit.logger,
        lifespan=lifespan,
        after_startup=[announce_ready],
        on_shutdown=list(on_shutdown or []),
    )
