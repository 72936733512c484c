"""Serving an HTTP service, one way for all of them: uvicorn on uvloop and httptools, its logging left to
``libs.platform.logging`` (no access log, no uvicorn log config of its own); and the one count of a request
body's bytes every service's body limit uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope


def serve(app: ASGIApp, host: str, port: int, **options: Any) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM; ``options`` are the service's own further
    ``uvicorn.run`` options (a shutdown grace, a backlog, proxy headers)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        **options,
    )


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
