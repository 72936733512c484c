"""Plain ASGI middleware of the console: security headers on every response, and the cap on request bodies."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.platform.http import declared_length, limited

# Scripts, styles and images from the console itself only (no inline script: chart data travels as JSON in
# <script type="application/json">, which is not executed); no framing; forms post only to the console.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


class SecurityHeadersMiddleware:
    """Adds ``HEADERS`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyTooLarge(Exception):
    """A request body past the console's limit; raised where the body is read, answered with a 413 page."""


class BodyLimitMiddleware:
    """Holds every request body to ``max_body_bytes``: reading a body that declares more (``Content-Length``)
    raises ``BodyTooLarge`` before a byte of it is read, and one streamed without a length raises it as soon as
    it passes the limit. Nothing is read for a route that does not read its body."""

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
            receive = refuse_reading
        await self.app(scope, limited(receive, limit, BodyTooLarge), send)


async def refuse_reading() -> Message:
    """A body declared past the limit: refused where it would be read, before a byte of it is."""
    raise BodyTooLarge
