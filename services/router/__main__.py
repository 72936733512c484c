"""``python -m services.router``."""

from __future__ import annotations

import uvloop

from services.router.app import build_app
from services.router.settings import RouterSettings


def main() -> None:
    """Run the router until SIGINT/SIGTERM."""
    uvloop.run(build_app(RouterSettings()).run())


if __name__ == "__main__":
    main()
