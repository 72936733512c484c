"""Builds the hoster adapter: a faststream app whose lifespan owns the broker connection and HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream

from libs.platform.broker import connected, ensure_streams, make_broker
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import MetricsServer
from libs.platform.telemetry import serving_telemetry, setup_tracing
from services.hoster_adapter.handlers import register_handlers
from services.hoster_adapter.settings import AdapterSettings
from services.hoster_adapter.upstream import HosterAdapter

SERVICE = "hoster_adapter"


def build_app(settings: AdapterSettings) -> FastStream:
    """The adapter app for ``settings``; nothing connects until it runs."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    adapter_id = instance_id(settings.instance_id, SERVICE)
    adapter = HosterAdapter(settings, adapter_id, logger)
    provider = setup_tracing(SERVICE, adapter_id)
    broker = make_broker(settings.nats_url, adapter_id, logger, SERVICE, provider)
    metrics = MetricsServer(settings.metrics_port, lambda: connected(broker), logger)
    register_handlers(broker, adapter)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with serving_telemetry(metrics, settings.metrics_port, provider):
            await broker.connect()
            await ensure_streams(broker.connection, settings.nats_stream_replicas)
            await adapter.open(broker.connection)
            try:
                yield
            finally:
                await adapter.close()

    async def drain() -> None:
        # Runs before the broker stops, so attempts still running can report their outcome.
        await adapter.drain(grace_s=settings.shutdown_grace_s)

    async def announce_ready() -> None:
        # After the broker subscribed, and the server has the subscriptions (flush is a round trip): from
        # this line on the service takes messages.
        await broker.connection.flush()
        logger.info("adapter ready", extra={"adapter_id": adapter_id, "hosters": list(adapter.hosters)})

    return FastStream(broker, logger=logger, lifespan=lifespan, after_startup=[announce_ready], on_shutdown=[drain])
