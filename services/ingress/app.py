"""Builds the ingress FastAPI app; its lifespan owns the NATS connection and the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from libs.contracts.openai import error_body
from libs.platform.broker import make_broker
from libs.platform.http import behind_proxies
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import IN_FLIGHT, MetricsServer
from libs.platform.telemetry import setup_tracing
from services.ingress import management
from services.ingress.console_proxy import ConsoleProxy
from services.ingress.gateway import Gateway, GatewayError
from services.ingress.handlers import HOT_ENDPOINTS, error_response, router
from services.ingress.middleware import BodyLimitMiddleware, HotRoutes, HttpMetricsMiddleware
from services.ingress.openapi import install_openapi
from services.ingress.settings import IngressSettings

SERVICE = "ingress"


def api_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """Every API route, those of included routers too."""
    found: list[APIRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router
        if inner is not None:
            found += api_routes(inner.routes)
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


def methods_of(routes: Sequence[BaseRoute], path: str) -> set[str]:
    """Every method some route serves ``path`` with (included routers' routes too)."""
    return {
        method for route in api_routes(routes) if route.path_regex.fullmatch(path) for method in route.methods or ()
    }


def build_app(settings: IngressSettings) -> FastAPI:
    """The ingress app for ``settings``; nothing connects until its lifespan starts."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    ingress_id = instance_id(settings.instance_id, SERVICE)
    provider = setup_tracing(SERVICE, ingress_id)
    broker = make_broker(settings.nats_url, ingress_id, logger, SERVICE, provider, settings.nats_creds)
    gateway = Gateway(
        ingress_id,
        settings.route_timeout_s,
        settings.idle_timeout_s,
        settings.key_cache_s,
        logger,
        first_byte_ceiling_s=settings.first_byte_ceiling_s,
        deadline_grace_s=settings.deadline_grace_s,
        stall_timeout_s=settings.stall_timeout_s,
        max_pending_bytes=settings.max_pending_bytes,
        max_subscription_bytes=settings.max_subscription_bytes,
        invalid_keys_per_minute=settings.invalid_keys_per_minute,
        invalid_keys_burst=settings.invalid_keys_burst,
        models_cache_s=settings.models_cache_s,
    )

    # /metrics on the metrics port only (CS_METRICS_PORT), never on the public API's.
    metrics = MetricsServer(settings.metrics_port, lambda: broker.connection.is_connected, logger)
    console = ConsoleProxy(settings.console_url) if settings.console_url else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.connect()
        await gateway.open(broker.connection)
        if settings.metrics_port:
            await metrics.start()
        logger.info("ingress ready", extra={"ingress_id": ingress_id, "port": settings.port})
        IN_FLIGHT.labels(SERVICE).set_function(lambda: gateway.open_requests)
        if console is not None:
            await console.open()
        try:
            yield
        finally:
            if console is not None:
                await console.close()
            await metrics.stop()
            await gateway.close()
            await broker.stop()
            if provider is not None:
                provider.shutdown()

    app = FastAPI(
        title="computeshare",
        version="0.1.0",
        description="OpenAI-compatible inference gateway of the computeshare network.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.include_router(router)
    app.include_router(management.router)
    if console is not None:
        console.install(app)
    # Innermost: the inference routes skip FastAPI's routing, behind the body limit and the metrics as before.
    app.add_middleware(HotRoutes, routes=[r for r in api_routes(app.routes) if r.endpoint in HOT_ENDPOINTS])
    # Every route, the console's pass-through included: no body larger than this is ever buffered or sent on.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware)
    # The client's address (its wrong-key budget's) from X-Forwarded-For, believed from the proxies named only.
    behind_proxies(app, settings.trusted_proxies)
    install_openapi(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"][1:]) or None
        return Response(
            error_body(f"Invalid value for '{param}': {error['msg']}", "invalid_request_error", None, param),
            status_code=400,
            media_type="application/json",
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc.report, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message, code = f"Invalid URL ({request.method} {request.url.path})", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method not allowed ({request.method} {request.url.path})", "method_not_allowed"
            # Starlette names the methods of the first route on the path; several routes share some paths.
            allowed = methods_of(app.routes, request.url.path)
            if allowed:
                kept = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}
                exc.headers = {**kept, "allow": ", ".join(sorted(allowed))}
        else:
            message, code = str(exc.detail), None
        return Response(
            error_body(message, "invalid_request_error", code),
            status_code=exc.status_code,
            media_type="application/json",
            headers=exc.headers,  # a 405 lists the allowed methods
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", extra={"path": request.url.path})
        return Response(
            error_body("The server had an error while processing your request.", "server_error"),
            status_code=500,
            media_type="application/json",
        )

    return app
