"""Builds the billing service; its lifespan owns the database pool, the broker connection and the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from faststream import FastStream

from libs.platform.broker import HotSubscriptions, ensure_streams
from libs.platform.metrics import RESERVATIONS_OPEN
from libs.platform.service import faststream_app, service_kit
from services.billing.accounts import Accounts
from services.billing.durable import Redelivery
from services.billing.handlers import (
    register_handlers,
    register_management_handlers,
    register_model_handlers,
    register_response_handlers,
)
from services.billing.ledger import Ledger, Recall
from services.billing.repository import HosterRepository, apply_migrations
from services.billing.responses import ResponseStore
from services.billing.settings import BillingSettings
from services.billing.tokenizers import ModelRegistry

SERVICE = "billing"


async def sweep(
    ledger: Ledger, settings: BillingSettings, recall: Recall, logger: logging.Logger, responses: ResponseStore
) -> None:
    """Close stale reservations and take back stale credit leases now and then (a lease is recalled from its
    router first: if it still runs, its word on what it admitted stands), and delete expired stored
    responses; a failed sweep is retried at the next interval."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            closed = await ledger.expire_stale(settings.reservation_ttl_s)
            stale, stranded = await ledger.expire_stale_leases(settings.lease_ttl_s, recall)
            RESERVATIONS_OPEN.set(await ledger.open_reservations())
            expired = await responses.sweep()
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning("sweep failed", extra={"error": repr(exc)})
            continue
        if closed:
            logger.info("stale reservations closed", extra={"count": closed})
        if expired:
            logger.info("expired responses deleted", extra={"count": expired})
        if stale or stranded:
            logger.info("stale credit leases taken back", extra={"count": stale, "stranded": stranded})


async def release_cheaply(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool: no open transaction. asyncpg's default reset
    is one more round trip per use (unlisten, unlock advisory locks, reset settings), for session state
    billing never leaves behind (its one advisory lock is released where it is taken)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def build_app(settings: BillingSettings) -> FastStream:
    """The billing app for ``settings``; nothing connects until it runs."""
    kit = service_kit(SERVICE, settings)
    broker, logger = kit.broker, kit.logger
    ledger = Ledger()
    hosters = HosterRepository()
    accounts = Accounts()
    models = ModelRegistry()
    redelivery = Redelivery(settings.max_deliver, settings.retry_backoff_s, settings.retry_backoff_max_s)
    hot = HotSubscriptions(logger, kit.tracer_provider)
    recall = register_handlers(
        broker, hot, ledger, accounts, hosters, settings.workers, redelivery, kit.logger, settings.lease_share
    )
    register_management_handlers(broker, accounts, hosters, settings.workers)
    register_model_handlers(broker, models, settings.workers)
    responses = ResponseStore(settings.responses_retention_days * 86400)
    register_response_handlers(broker, responses, settings.workers)

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            reset=release_cheaply,
        )
        sweeper: asyncio.Task[None] | None = None
        try:
            applied = await apply_migrations(pool)
            logger.info("migrations applied", extra={"applied": applied})
            ledger.attach(pool)
            hosters.attach(pool)
            accounts.attach(pool)
            models.attach(pool)
            responses.attach(pool)
            await broker.connect()
            await ensure_streams(broker.connection, settings.nats_stream_replicas)
            await hot.start(broker.connection)
            sweeper = asyncio.create_task(sweep(ledger, settings, recall, logger, responses))
            yield
        finally:
            await hot.stop()
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await pool.close()

    return faststream_app(kit, resources)
