"""Serving an HTTP service, one way for all of them: uvicorn on uvloop and httptools, its logging left to
``libs.platform.logging`` (no access log, no uvicorn log config of its own)."""

from __future__ import annotations

from typing import Any

import uvicorn
from starlette.types import ASGIApp


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
