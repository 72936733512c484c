"""Builds the billing service; its lifespan owns the database pool, the broker connection and the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from faststream import FastStream

from libs.platform.broker import connected, ensure_streams, make_broker
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import RESERVATIONS_OPEN, MetricsServer
from libs.platform.telemetry import serving_telemetry, setup_tracing
from services.billing.handlers import register_handlers
from services.billing.ledger import Ledger
from services.billing.repository import UsageRepository, apply_migrations
from services.billing.settings import BillingSettings

SERVICE = "billing"


async def sweep(ledger: Ledger, settings: BillingSettings, logger: logging.Logger) -> None:
    """Close stale reservations now and then; a failed sweep is retried at the next interval."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            closed = await ledger.expire_stale(settings.reservation_ttl_s)
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning("sweep failed", extra={"error": repr(exc)})
            continue
        if closed:
            logger.info("stale reservations closed", extra={"count": closed})
        RESERVATIONS_OPEN.set(await ledger.open_reservations())


def build_app(settings: BillingSettings) -> FastStream:
    """The billing app for ``settings``; nothing connects until it runs."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    billing_id = instance_id(settings.instance_id, SERVICE)
    provider = setup_tracing(SERVICE, billing_id)
    broker = make_broker(settings.nats_url, billing_id, logger, SERVICE, provider)
    metrics = MetricsServer(settings.metrics_port, lambda: connected(broker), logger)
    usage = UsageRepository()
    ledger = Ledger()
    register_handlers(broker, ledger, usage, settings.workers)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with serving_telemetry(metrics, settings.metrics_port, provider), resources():
            yield

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
        )
        sweeper: asyncio.Task[None] | None = None
        try:
            applied = await apply_migrations(pool)
            logger.info("migrations applied", extra={"applied": applied})
            usage.attach(pool)
            ledger.attach(pool)
            await broker.connect()
            await ensure_streams(broker.connection, settings.nats_stream_replicas)
            sweeper = asyncio.create_task(sweep(ledger, settings, logger))
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await pool.close()

    async def announce_ready() -> None:
        # After the broker subscribed, and the server has the subscriptions (flush is a round trip): from
        # this line on the service takes messages.
        await broker.connection.flush()
        logger.info("billing ready", extra={"billing_id": billing_id})

    return FastStream(broker, logger=logger, lifespan=lifespan, after_startup=[announce_ready])
