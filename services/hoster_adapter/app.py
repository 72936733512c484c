"""Builds the hoster adapter: a faststream app whose lifespan owns the broker connection and HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream

from libs.platform.broker import ensure_streams
from libs.platform.service import faststream_app, service_kit
from services.hoster_adapter.handlers import register_handlers
from services.hoster_adapter.settings import AdapterSettings
from services.hoster_adapter.upstream import HosterAdapter

SERVICE = "hoster_adapter"


def build_app(settings: AdapterSettings) -> FastStream:
    """The adapter app for ``settings``; nothing connects until it runs."""
    kit = service_kit(SERVICE, settings)
    adapter = HosterAdapter(settings, kit.instance_id, kit.logger)
    register_handlers(kit.broker, adapter)

    @asynccontextmanager
    async def resources() -> AsyncIterator[None]:
        await kit.broker.connect()
        await ensure_streams(kit.broker.connection, settings.nats_stream_replicas)
        await adapter.open(kit.broker.connection)
        try:
            yield
        finally:
            await adapter.close()

    async def drain() -> None:
        # Runs before the broker stops, so attempts still running can report their outcome.
        await adapter.drain(grace_s=settings.shutdown_grace_s)

    return faststream_app(kit, resources, on_shutdown=[drain], ready_details=lambda: {"hosters": list(adapter.hosters)})
