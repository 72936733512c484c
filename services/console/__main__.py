"""``python -m services.console``."""

from __future__ import annotations

import uvicorn

from services.console.app import build_app
from services.console.settings import ConsoleSettings


def main() -> None:
    """Serve the console until SIGINT/SIGTERM."""
    settings = ConsoleSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # Behind the ingress or a load balancer: believe their X-Forwarded-* only from loopback by default
        # (FORWARDED_ALLOW_IPS widens it).
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
