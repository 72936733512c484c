"""Serving an HTTP service, one way for all of them: uvicorn on uvloop and httptools, its logging left to
``libs.platform.logging`` (no access log, no uvicorn log config of its own); and the one count of a request
body's bytes every service's body limit uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


def serve(app: ASGIApp, host: str, port: int, **options: Any) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM; ``options`` are the service's own further
    ``uvicorn.run`` options (a shutdown grace, a backlog). uvicorn's own proxy headers are off: it would
    believe X-Forwarded-For from loopback (or whatever FORWARDED_ALLOW_IPS says); an app that sits behind
    proxies names them in its settings (``behind_proxies``)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        **options,
    )


def behind_proxies(app: Starlette, trusted: list[str]) -> None:
    """Make the client of ``app``'s requests the one a ``trusted`` proxy (an address or network) names in
    X-Forwarded-For, the right-most entry that is not itself a trusted proxy, and the scheme the one in
    X-Forwarded-Proto; from any other peer both headers are ignored and the peer is the client. Added last,
    so every other middleware and route sees the client's address."""
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, if it declares a valid one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def limited(receive: Receive, limit: int, too_large: Callable[[], Exception]) -> Receive:
    """``receive`` that raises ``too_large()`` inside whatever reads the body, as soon as it passes ``limit``
    bytes (a body streamed without a length, or longer than it declared)."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large()
        return message

    return limited_receive
