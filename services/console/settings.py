"""Settings of the console."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings, TrustedProxies

# Session secrets published with the project (docker-compose.yml's fallback): anyone could sign sessions with
# them.
PUBLISHED_SECRETS = frozenset({"compose-dev-only-console-session-secret-not-a-secret"})


class ConsoleSettings(ServiceSettings):
    """``CS_CONSOLE_*``."""

    model_config = SettingsConfigDict(env_prefix="CS_CONSOLE_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    # Signs the session cookies (and the CSRF tokens in them): every replica must share it, and rotating it
    # signs everyone out. No default: a console whose secret anyone could read would accept forged sessions.
    session_secret: SecretStr = Field(min_length=32)
    # A published secret (``PUBLISHED_SECRETS``) is refused unless this says the console is a laptop's
    # (docker compose sets it while its own fallback secret is in use).
    allow_dev_secret: bool = False
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
    # Wrong sign-ins a client address may try: this many at once, then this many a minute (a right one is
    # free). Keys and tokens are 256-bit random; this keeps billing's lookups from being spent freely.
    sign_in_burst: int = Field(10, ge=1)
    sign_ins_per_minute: float = Field(10.0, gt=0)
    # The proxies in front (the Ingress controller, or the ingress's /console pass-through) whose
    # X-Forwarded-For and X-Forwarded-Proto are believed (``TrustedProxies``); none by default.
    trusted_proxies: TrustedProxies = Field(default_factory=list)

    @model_validator(mode="after")
    def _refuse_a_published_secret(self) -> Self:
        if self.session_secret.get_secret_value() in PUBLISHED_SECRETS and not self.allow_dev_secret:
            raise ValueError(
                "CS_CONSOLE_SESSION_SECRET is the development default published in docker-compose.yml: anyone "
                "could sign sessions with it. Set your own (32+ random characters), or CS_CONSOLE_ALLOW_DEV_SECRET="
                "true on a laptop."
            )
        return self
