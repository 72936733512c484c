"""``python -m services.hoster_adapter``."""

from __future__ import annotations

import uvloop

from services.hoster_adapter.app import build_app
from services.hoster_adapter.settings import AdapterSettings


def main() -> None:
    """Run the adapter until SIGINT/SIGTERM."""
    uvloop.run(build_app(AdapterSettings()).run())


if __name__ == "__main__":
    main()
