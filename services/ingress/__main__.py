"""``python -m services.ingress``."""

from __future__ import annotations

from libs.platform.http import serve
from services.ingress.app import build_app
from services.ingress.settings import IngressSettings


def main() -> None:
    """Serve the API until SIGINT/SIGTERM; open streams get ``shutdown_grace_s`` to finish."""
    settings = IngressSettings()
    serve(
        build_app(settings),
        settings.host,
        settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
