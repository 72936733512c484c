"""Plain ASGI middleware of the ingress: HTTP metrics for every route, the cap on every request body (a few
microseconds a request each), and the inference routes served without FastAPI's routing and dependency
solving."""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.contracts import errors
from libs.platform.http import declared_length, limited
from libs.platform.metrics import HTTP_DURATION, HTTP_REQUESTS
from services.ingress.gateway import GatewayError
from services.ingress.handlers import authenticate, error_response, gateway_of, settings_of
from services.ingress.service import error_response_body


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


class BodyLimitMiddleware:
    """No route of the ingress buffers (or passes on) more than ``max_body_bytes`` of a request body, whatever
    it declares as its parameters: a declared ``Content-Length`` over the limit is a 413 before the app runs,
    and a body streamed without one is cut off with a 413 as soon as it passes the limit. Routes may hold their
    bodies to smaller limits of their own (the management API does)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await send_too_large(send, limit)
            return
        # Raised inside the route that reads: the app's GatewayError handler answers the 413.
        too_large = lambda: GatewayError(errors.request_too_large(limit))  # noqa: E731
        await self.app(scope, limited(receive, limit, too_large), send)


async def send_too_large(send: Send, limit: int) -> None:
    """A 413 in the OpenAI envelope, sent without reading the body. The connection is closed after it: the
    unread body must not be taken for the next request."""
    body = error_response_body(errors.request_too_large(limit))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HotRoutes:
    """``POST`` to the inference routes (``handlers.HOT_ENDPOINTS``) without FastAPI's route matching and
    dependency solving, which took about a sixth of the ingress's CPU under load. It calls the same endpoint
    with what FastAPI would have solved for it (the app's gateway and settings, ``authenticate``'s caller), and
    answers a ``GatewayError`` as the app's handler does; any other error goes on to the app's 500 handler, as
    from FastAPI. It sits inside the HTTP metrics and the body limit, and sets the matched route on the scope
    as FastAPI does (the metrics label by it).

    FastAPI still declares these routes (the OpenAPI document) and serves every other method and path, and these
    too when its own OpenTelemetry instrumentation observes the request (tracing on: its spans stay as they
    were) or the app is served under a root path (never, by ``__main__``)."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or scope.get("root_path") or scope.get("fastapi.telemetry") is not None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        request = Request(scope, receive, send)
        response: Response
        try:
            gateway = await gateway_of(request)
            settings = await settings_of(request)
            caller = await authenticate(request, gateway, settings)
            response = await route.endpoint(request=request, caller=caller, gateway=gateway, settings=settings)
        except GatewayError as exc:
            response = error_response(exc.report, exc.headers)
        await response(scope, receive, send)
