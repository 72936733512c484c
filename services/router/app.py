"""Builds the router: a faststream app whose lifespan owns the connection, the stores and the watchers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from faststream import FastStream

from libs.contracts import subjects
from libs.platform.broker import connected, make_broker
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import MetricsServer
from libs.platform.telemetry import serving_telemetry, setup_tracing
from services.router.dispatcher import Dispatcher
from services.router.handlers import register_handlers
from services.router.settings import RouterSettings
from services.router.stats import HosterStats
from services.router.store import KvStore

SERVICE = "router"


def persist_stats(dispatcher: Dispatcher, store: KvStore) -> None:
    """Write the stats of hosters whose stats changed since the last call."""
    for hoster_id, state in dispatcher.stats.take_dirty().items():
        store.put(hoster_id, orjson.dumps({"hoster_id": hoster_id, **state}))


async def persist_stats_every(dispatcher: Dispatcher, store: KvStore, interval_s: float) -> None:
    """``persist_stats`` every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        persist_stats(dispatcher, store)


def build_app(settings: RouterSettings) -> FastStream:
    """The router app for ``settings``; nothing connects until it runs."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    router_id = instance_id(settings.instance_id, SERVICE)
    provider = setup_tracing(SERVICE, router_id)
    broker = make_broker(settings.nats_url, router_id, logger, SERVICE, provider)
    metrics = MetricsServer(settings.metrics_port, lambda: connected(broker), logger)
    dispatcher = Dispatcher(settings, router_id, broker, logger)
    models_seen = KvStore(subjects.MODELS_SEEN_BUCKET, logger, settings.nats_stream_replicas)
    hoster_stats = KvStore(subjects.HOSTER_STATS_BUCKET, logger, settings.nats_stream_replicas)
    register_handlers(broker, dispatcher, models_seen, settings.max_concurrent_routes)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with serving_telemetry(metrics, settings.metrics_port, provider), resources():
            yield

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        await broker.connect()
        js = broker.connection.jetstream()
        for raw in await models_seen.open(js):
            record = orjson.loads(raw)
            dispatcher.registry.models_seen[record["model"]] = int(record["first_seen"])
        for raw in await hoster_stats.open(js):
            record = orjson.loads(raw)
            dispatcher.stats.hosters[record["hoster_id"]] = HosterStats.load(record)
        tasks = [
            asyncio.create_task(dispatcher.watch()),
            asyncio.create_task(persist_stats_every(dispatcher, hoster_stats, settings.stats_flush_s)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def announce_ready() -> None:
        # After the broker subscribed, and the server has the subscriptions (flush is a round trip): from
        # this line on the service takes messages.
        await broker.connection.flush()
        logger.info("router ready", extra={"router_id": router_id, "hosters_known": len(dispatcher.stats.hosters)})

    async def flush() -> None:
        # Before the broker stops: settlement events and the latest stats still reach JetStream.
        await dispatcher.drain()
        persist_stats(dispatcher, hoster_stats)
        await models_seen.close()
        await hoster_stats.close()

    return FastStream(broker, logger=logger, lifespan=lifespan, after_startup=[announce_ready], on_shutdown=[flush])
