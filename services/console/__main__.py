"""``python -m services.console``."""

from __future__ import annotations

from libs.platform.http import serve
from services.console.app import build_app
from services.console.settings import ConsoleSettings


def main() -> None:
    """Serve the console until SIGINT/SIGTERM."""
    settings = ConsoleSettings()
    serve(build_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
