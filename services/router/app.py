"""Builds the router: a faststream app whose lifespan owns the connection, the stores and the watchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from faststream import FastStream

from libs.contracts import subjects
from libs.platform.broker import HotSubscriptions
from libs.platform.service import faststream_app, service_kit
from services.router.dispatcher import Dispatcher
from services.router.handlers import register_handlers
from services.router.probes import Prober
from services.router.settings import RouterSettings
from services.router.spotchecks import SpotChecker
from services.router.stats import HosterStats
from services.router.store import KvStore

SERVICE = "router"


def _record(raw: bytes) -> dict[str, Any]:
    """A stored JSON object, ``{}`` when the value is not one."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def restore(
    dispatcher: Dispatcher, models: list[bytes], stats: list[bytes], wall: float, logger: logging.Logger
) -> None:
    """Take back what the buckets hold: the models ever served and every hoster's stats. A record unlike
    what this router writes (another version's, a broken one) is skipped, and a stored number that is not
    usable takes its default (``HosterStats.load``): the router starts and routes whatever the store holds."""
    for raw in models:
        record = _record(raw)
        model, first_seen, hoster_id = record.get("model"), record.get("first_seen"), record.get("hoster_id", "")
        if isinstance(model, str) and type(first_seen) is int and isinstance(hoster_id, str):
            dispatcher.registry.remember(model, first_seen, hoster_id)
        else:
            logger.warning("stored model skipped", extra={"bucket": subjects.MODELS_SEEN_BUCKET})
    for raw in stats:
        record = _record(raw)
        hoster_id = record.get("hoster_id")
        if isinstance(hoster_id, str):
            dispatcher.stats.hosters[hoster_id] = HosterStats.load(record, wall)
        else:
            logger.warning("stored hoster stats skipped", extra={"bucket": subjects.HOSTER_STATS_BUCKET})


def restore_verdicts(dispatcher: Dispatcher, records: list[bytes], wall: float, logger: logging.Logger) -> None:
    """Take back the stored spot check verdicts (a record unlike what this router writes is skipped)."""
    v = dispatcher.verifications
    for raw in records:
        if not v.load(_record(raw)):
            logger.warning("stored verdict skipped", extra={"bucket": subjects.VERDICTS_BUCKET})
    for hoster_id in {hoster_id for hoster_id, _ in v.verdicts}:
        dispatcher.mark_spot_checks(hoster_id, wall)


def persist_verdicts(dispatcher: Dispatcher, store: KvStore) -> None:
    """Write the verdicts changed since the last call."""
    for key, record in dispatcher.verifications.take_dirty().items():
        store.put(key, orjson.dumps(record))


def persist_stats(dispatcher: Dispatcher, store: KvStore) -> None:
    """Write the stats of hosters whose stats changed since the last call."""
    for hoster_id, state in dispatcher.stats.take_dirty().items():
        store.put(hoster_id, orjson.dumps({"hoster_id": hoster_id, **state}))


async def persist_stats_every(dispatcher: Dispatcher, store: KvStore, verdicts: KvStore, interval_s: float) -> None:
    """``persist_stats`` and ``persist_verdicts`` every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        persist_stats(dispatcher, store)
        persist_verdicts(dispatcher, verdicts)


async def listen_first(dispatcher: Dispatcher, wait_s: float) -> None:
    """Wait until a hoster is live, or ``wait_s``: a router that routes before it heard a heartbeat answers
    503 (no hoster) for a network that has some."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(dispatcher.heard_hoster.wait(), wait_s)


def build_app(settings: RouterSettings) -> FastStream:
    """The router app for ``settings``; nothing connects until it runs."""
    kit = service_kit(SERVICE, settings)
    broker, logger = kit.broker, kit.logger
    dispatcher = Dispatcher(settings, kit.instance_id, broker, logger)
    models_seen = KvStore(subjects.MODELS_SEEN_BUCKET, logger, settings.nats_stream_replicas)
    hoster_stats = KvStore(subjects.HOSTER_STATS_BUCKET, logger, settings.nats_stream_replicas)
    verdicts = KvStore(subjects.VERDICTS_BUCKET, logger, settings.nats_stream_replicas)
    hot = HotSubscriptions(logger, kit.tracer_provider)
    routes = HotSubscriptions(logger, kit.tracer_provider)
    register_handlers(broker, hot, routes, dispatcher, models_seen, settings.max_concurrent_routes, logger)

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        await broker.connect()
        js = broker.connection.jetstream()
        restore(dispatcher, await models_seen.open(js), await hoster_stats.open(js), time.time(), logger)
        restore_verdicts(dispatcher, await verdicts.open(js), time.time(), logger)
        tasks = [
            asyncio.create_task(dispatcher.keep_registrations(settings.registrations_refresh_s)),
            asyncio.create_task(dispatcher.keep_registered_models()),
            asyncio.create_task(dispatcher.watch()),
            asyncio.create_task(dispatcher.keep_reservations_alive()),
            asyncio.create_task(dispatcher.keep_leases_alive()),
            asyncio.create_task(persist_stats_every(dispatcher, hoster_stats, verdicts, settings.stats_flush_s)),
        ]
        if settings.probe_interval_s > 0:
            tasks.append(asyncio.create_task(Prober(dispatcher, settings, logger).run(broker.connection)))
        if settings.spot_check_api_base and settings.spot_check_api_key is not None:
            tasks.append(asyncio.create_task(SpotChecker(dispatcher, settings, logger).run(broker.connection)))
        # Routes are taken once the router knows the models the network ever served (a model never seen is a
        # 404) and has heard the live hosters' heartbeats (other replicas take routes meanwhile).
        await hot.start(broker.connection)
        await listen_first(dispatcher, settings.startup_listen_s)
        await routes.start(broker.connection)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def flush() -> None:
        # Before the broker stops: routes being decided get their answers; the requests in flight end as usual
        # (their reports and the ingress's notes still arrive on ``hot``) and are settled; settlement events
        # and the latest stats still reach JetStream.
        await routes.stop()
        await dispatcher.drain()
        await hot.stop()
        persist_stats(dispatcher, hoster_stats)
        persist_verdicts(dispatcher, verdicts)
        await models_seen.close()
        await hoster_stats.close()
        await verdicts.close()

    return faststream_app(
        kit, resources, on_shutdown=[flush], ready_details=lambda: {"hosters_known": len(dispatcher.stats.hosters)}
    )
