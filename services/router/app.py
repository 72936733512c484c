"""Builds the router: a faststream app whose lifespan owns the connection, the KV bucket and the watcher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream
from nats.js.errors import BucketNotFoundError

from libs.platform.broker import make_broker
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from services.router.dispatcher import Dispatcher
from services.router.handlers import register_handlers
from services.router.models_seen import BUCKET, ModelsSeenStore
from services.router.settings import RouterSettings

SERVICE = "router"


def build_app(settings: RouterSettings) -> FastStream:
    """The router app for ``settings``; nothing connects until it runs."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    router_id = instance_id(settings.instance_id, SERVICE)
    broker = make_broker(settings.nats_url, router_id, logger)
    dispatcher = Dispatcher(settings, router_id, broker, logger)
    store = ModelsSeenStore(logger)
    register_handlers(broker, dispatcher, store, settings.max_concurrent_routes)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await broker.connect()
        js = broker.connection.jetstream()
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=BUCKET, history=1)
        dispatcher.registry.models_seen.update(await store.open(kv))
        watcher = asyncio.create_task(dispatcher.watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await store.close()

    async def announce_ready() -> None:
        # After the broker subscribed: from this line on the service takes messages.
        logger.info("router ready", extra={"router_id": router_id})

    return FastStream(
        broker, logger=logger, lifespan=lifespan, after_startup=[announce_ready], on_shutdown=[dispatcher.drain]
    )
