"""Settings of the router."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """``CS_ROUTER_*``."""

    model_config = SettingsConfigDict(env_prefix="CS_ROUTER_", populate_by_name=True, extra="ignore")

    # A hoster (and the adapter fronting it) missing from heartbeats this long is gone.
    hoster_ttl_s: float = Field(3.0, gt=0)
    # How long an adapter has to accept an attempt before the router tries the next hoster.
    dispatch_timeout_s: float = Field(2.0, gt=0)
    # Retry-After sent with a 503 when no hoster can serve right now.
    retry_after_s: int = Field(5, ge=1)
    max_concurrent_routes: int = Field(512, ge=1)
