"""HTTP metrics for every route: a plain ASGI middleware, a few microseconds a request."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.platform.metrics import HTTP_DURATION, HTTP_REQUESTS


class HttpMetricsMiddleware:
    """Counts responses by route template and status, and times each until its response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                # The template, not the path: ids in paths would make a label per request.
                label = getattr(route, "path", "unmatched")
                HTTP_REQUESTS.labels(label, str(message["status"])).inc()
                HTTP_DURATION.labels(label).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)
