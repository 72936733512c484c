"""The one telemetry setup: OpenTelemetry traces (exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, otherwise a no-op that costs nothing), trace context carried in NATS headers, and the request id every
log line of a request carries.

Token chunks are never traced one by one: a request has spans for its hops, not for its tokens.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from libs.platform.metrics import MetricsServer

# The id of the request being handled, for log lines (set by whoever starts working on a request).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def setup_tracing(service: str, instance_id: str) -> TracerProvider | None:
    """A tracer provider exporting over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; ``None``
    (tracing off, no overhead) otherwise. The caller's lifespan shuts it down."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": instance_id}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # OpenTelemetry's API is built around one provider per process; instrumentation finds it there.
    trace.set_tracer_provider(provider)
    return provider


@asynccontextmanager
async def serving_telemetry(metrics: MetricsServer, port: int, provider: TracerProvider | None) -> AsyncIterator[None]:
    """Serve metrics (when ``port`` is set) for the lifespan's duration; flush and stop tracing at its end."""
    if port:
        await metrics.start()
    try:
        yield
    finally:
        await metrics.stop()
        if provider is not None:
            provider.shutdown()


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current trace context (W3C ``traceparent``), for a NATS message or HTTP call."""
    carrier: dict[str, str] = dict(headers or {})
    inject(carrier)
    return carrier


def context_from(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message or request carried."""
    return extract(dict(headers or {}))


class CorrelationFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record, when there are any."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
        return True


def span_attributes(**attributes: Any) -> dict[str, Any]:
    """Attributes with the ``None`` values left out (OpenTelemetry refuses them)."""
    return {key: value for key, value in attributes.items() if value is not None}
