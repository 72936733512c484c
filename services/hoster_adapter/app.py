"""Builds the hoster adapter: a faststream app whose lifespan owns the broker connection and HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream

from libs.contracts import subjects
from libs.platform.broker import HotSubscriptions
from libs.platform.service import faststream_app, service_kit
from services.hoster_adapter.handlers import register_handlers
from services.hoster_adapter.settings import AdapterSettings
from services.hoster_adapter.upstream import HosterAdapter

SERVICE = "hoster_adapter"


def build_app(settings: AdapterSettings) -> FastStream:
    """The adapter app for ``settings``; nothing connects until it runs."""
    own = settings.agent_hoster_id()
    # Replies to this process's requests (JetStream acks) come back under an inbox only it may read.
    kit = service_kit(SERVICE, settings, inbox_prefix=subjects.hoster_inbox_prefix(own or "platform"))
    adapter = HosterAdapter(settings, kit.instance_id, kit.logger)
    hot = HotSubscriptions(kit.logger, kit.tracer_provider)
    register_handlers(kit.broker, hot, adapter)

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        # No JetStream API here: hosters may not touch it. Billing and the routers create the streams.
        await kit.broker.connect()
        await adapter.open(kit.broker.connection)
        await hot.start(kit.broker.connection)
        try:
            yield
        finally:
            await adapter.close()

    async def drain() -> None:
        # Runs before the broker stops, so attempts still running can report their outcome.
        await hot.stop(grace_s=1.0)
        await adapter.drain(grace_s=settings.shutdown_grace_s)

    return faststream_app(kit, resources, on_shutdown=[drain], ready_details=lambda: {"hosters": list(adapter.hosters)})
