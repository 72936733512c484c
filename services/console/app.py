"""Builds the console's FastAPI app; its lifespan owns the NATS connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from libs.contracts import subjects
from libs.platform.broker import make_broker
from libs.platform.http import behind_proxies
from libs.platform.ids import instance_id
from libs.platform.logging import setup_logging
from libs.platform.metrics import MetricsServer
from libs.platform.ratelimit import FailureBudget
from libs.platform.telemetry import setup_tracing
from services.console.handlers import Console, render, router, session_of, too_large
from services.console.middleware import BodyLimitMiddleware, BodyTooLarge, SecurityHeadersMiddleware
from services.console.queries import Queries, Unavailable
from services.console.sessions import SessionCodec
from services.console.settings import ConsoleSettings

SERVICE = "console"
HERE = Path(__file__).resolve().parent
# The largest request body the console reads: its forms are a few short fields (``handlers.form_of``).
MAX_FORM_BYTES = 16 * 1024


def build_app(settings: ConsoleSettings) -> FastAPI:
    """The console app for ``settings``; nothing connects until its lifespan starts."""
    logger = setup_logging(SERVICE, settings.log_level, settings.log_format)
    own_id = instance_id(settings.instance_id, SERVICE)
    provider = setup_tracing(SERVICE, own_id)
    # Its credentials let it receive replies on its own inbox prefix only (``console_permissions``).
    broker = make_broker(settings.nats_url, own_id, logger, SERVICE, provider, settings.nats_creds,
                         inbox_prefix=subjects.CONSOLE_INBOX)  # fmt: skip
    queries = Queries(settings.request_timeout_s)
    metrics = MetricsServer(settings.metrics_port, lambda: queries.connected, logger)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.connect()
        queries.open(broker.connection)
        if settings.metrics_port:
            await metrics.start()
        logger.info("console ready", extra={"instance_id": own_id, "port": settings.port})
        try:
            yield
        finally:
            await metrics.stop()
            queries.close()
            await broker.stop()
            if provider is not None:
                provider.shutdown()

    # No redirect to the same path with or without its trailing slash: Starlette would write it with the Host the
    # request came with, the console's own address behind the ingress's pass-through.
    app = FastAPI(title="computeshare console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)  # fmt: skip
    templates = Jinja2Templates(directory=HERE / "templates")
    codec = SessionCodec(settings.session_secret.get_secret_value(), settings.session_ttl_s)
    sign_ins = FailureBudget(settings.sign_ins_per_minute, settings.sign_in_burst)
    console = app.state.console = Console(settings, queries, codec, templates, sign_ins)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=MAX_FORM_BYTES)
    app.add_middleware(SecurityHeadersMiddleware)
    # Behind the ingress or a load balancer: its X-Forwarded-* give the browser's address (the sign-in budget's)
    # and scheme (Secure cookies), believed from the proxies the settings name only.
    behind_proxies(app, settings.trusted_proxies)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ready = queries.connected
        return JSONResponse({"status": "ready" if ready else "not connected"}, status_code=200 if ready else 503)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> Response:
        return too_large(request, console)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> Response:
        response = render(request, console, session_of(request, console), "error.html", status_code=503,
                          title="Unavailable", message=str(exc))  # fmt: skip
        response.headers["retry-after"] = "5"
        return response

    return app
