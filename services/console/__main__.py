"""``python -m services.console``."""

from __future__ import annotations

from libs.platform.http import serve
from services.console.app import build_app
from services.console.settings import ConsoleSettings


def main() -> None:
    """Serve the console until SIGINT/SIGTERM."""
    settings = ConsoleSettings()
    # Behind the ingress or a load balancer: believe their X-Forwarded-* only from loopback by default
    # (FORWARDED_ALLOW_IPS widens it).
    serve(build_app(settings), settings.host, settings.port, proxy_headers=True)


if __name__ == "__main__":
    main()
