"""Settings of the console."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings


class ConsoleSettings(ServiceSettings):
    """``CS_CONSOLE_*``."""

    model_config = SettingsConfigDict(env_prefix="CS_CONSOLE_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    # Signs the session cookies (and the CSRF tokens in them): every replica must share it, and rotating it
    # signs everyone out. No default: a console whose secret anyone could read would accept forged sessions.
    session_secret: SecretStr = Field(min_length=32)
    # A session lasts this long without a visit; the key or token behind it is checked again on every page,
    # so a revoked one ends its sessions at once.
    session_ttl_s: int = Field(8 * 3600, ge=60)
    # How long billing or a router has to answer one question before the page says it is unavailable.
    request_timeout_s: float = Field(3.0, gt=0)
    # Days of history in the charts.
    chart_days: int = Field(14, ge=1, le=90)
    # Where ``npm ci`` put the front-end libraries of ``package.json`` (Chart.js); the console serves them.
    vendor_dir: Path = Path(__file__).resolve().parent / "node_modules"
    # Rows in the recent requests and recent attempts tables.
    recent_rows: int = Field(50, ge=1, le=500)
