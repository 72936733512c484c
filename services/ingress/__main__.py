"""``python -m services.ingress``."""

from __future__ import annotations

import uvicorn

from services.ingress.app import build_app
from services.ingress.settings import IngressSettings


def main() -> None:
    """Serve the API until SIGINT/SIGTERM; open streams get ``shutdown_grace_s`` to finish."""
    settings = IngressSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
