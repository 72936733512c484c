"""``python -m services.billing``."""

from __future__ import annotations

import uvloop

from services.billing.app import build_app
from services.billing.settings import BillingSettings


def main() -> None:
    """Run billing until SIGINT/SIGTERM."""
    uvloop.run(build_app(BillingSettings()).run())


if __name__ == "__main__":
    main()
