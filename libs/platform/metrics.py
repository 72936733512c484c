"""Every Prometheus metric the services export, named and documented here and nowhere else.

| metric | type | labels | served by |
| --- | --- | --- | --- |
| `computeshare_http_requests_total` | counter | route, status | ingress |
| `computeshare_http_request_duration_seconds` | histogram | route | ingress (until the response starts) |
| `computeshare_time_to_first_token_seconds` | histogram | service | ingress, hoster_adapter (from the hoster) |
| `computeshare_requests_in_flight` | gauge | service | ingress, router, hoster_adapter |
| `computeshare_tokens_total` | counter | direction (in, out), model | hoster_adapter |
| `computeshare_attempts_total` | counter | outcome | router |
| `computeshare_hoster_failures_total` | counter | hoster | router |
| `computeshare_reservations_open` | gauge | | billing |
| `computeshare_settlements_total` | counter | result (settled, duplicate) | billing |
| `faststream_*` | | | router, billing, hoster_adapter (faststream's own message metrics) |

Every service serves them at `/metrics` on `CS_METRICS_PORT` (9090; the ingress never on its public API
port), with `/healthz` and `/readyz` beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter("computeshare_http_requests_total", "HTTP requests answered", ["route", "status"])
HTTP_DURATION = Histogram(
    "computeshare_http_request_duration_seconds",
    "Time until the response starts",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "computeshare_time_to_first_token_seconds", "Time to the first token", ["service"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("computeshare_requests_in_flight", "Requests being served", ["service"])
TOKENS = Counter("computeshare_tokens_total", "Tokens processed", ["direction", "model"])
ATTEMPTS = Counter("computeshare_attempts_total", "Attempts finished, by outcome", ["outcome"])
HOSTER_FAILURES = Counter("computeshare_hoster_failures_total", "Attempts a hoster failed", ["hoster"])
RESERVATIONS_OPEN = Gauge("computeshare_reservations_open", "Reservations of requests not yet settled")
SETTLEMENTS = Counter("computeshare_settlements_total", "Requests settled", ["result"])


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP for a service that has no HTTP server of its own;
    owned by the service's lifespan."""

    def __init__(self, port: int, ready: Callable[[], bool], logger: logging.Logger) -> None:
        self._port = port
        self._ready = ready
        self._log = logger
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on all interfaces (probes and scrapers come from outside the pod)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            # All interfaces: probes and scrapers come from outside the pod.
            await web.TCPSite(self._runner, "0.0.0.0", self._port).start()
        except OSError as exc:
            # Metrics are not worth the service: it keeps serving, and says why it cannot be scraped.
            self._log.error("metrics port unavailable", extra={"port": self._port, "error": repr(exc)})
            return
        self._log.info("metrics served", extra={"port": self._port})

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = exposition()
        return web.Response(body=body, headers={"content-type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)
