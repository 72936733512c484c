"""``python -m services.simulator``: serve the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

from libs.platform.http import serve
from libs.platform.logging import setup_logging
from services.simulator.app import SimulatedDisconnect, build_app
from services.simulator.settings import SimulatorSettings

# Hanging requests never end by themselves; on SIGTERM, open requests get this long before they are cancelled.
SHUTDOWN_GRACE_S = 5


def main() -> None:
    """Build the settings, set up logging and serve on the configured address."""
    settings = SimulatorSettings()
    logger = setup_logging("simulator", settings.log_level, settings.log_format)
    logging.getLogger("uvicorn.error").addFilter(_not_a_simulated_disconnect)
    logger.info(
        "simulator configured",
        extra={
            "models": settings.models,
            "ttft_ms": settings.ttft_ms,
            "tokens_per_second": settings.tokens_per_second,
            "reply_tokens": settings.reply_tokens,
            "fault": settings.fault,
            "fault_rate": settings.fault_rate,
        },
    )
    serve(build_app(settings), settings.host, settings.port, ws="none", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


def _not_a_simulated_disconnect(record: logging.LogRecord) -> bool:
    """Drop uvicorn's traceback for a connection the simulator dropped on purpose; it is not an error."""
    return record.exc_info is None or not isinstance(record.exc_info[1], SimulatedDisconnect)


if __name__ == "__main__":
    main()
