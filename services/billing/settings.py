"""Settings of the billing service."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    """``CS_BILLING_*``; the database URL carries a password, so it has no default."""

    model_config = SettingsConfigDict(env_prefix="CS_BILLING_", populate_by_name=True, extra="ignore")

    database_url: SecretStr
    pool_min_size: int = Field(2, ge=1)
    pool_max_size: int = Field(20, ge=1)
    # Messages one replica handles at once, per subscriber.
    workers: int = Field(32, ge=1)
    # A reservation whose request never reported its end is closed after this long (longer than the
    # longest generation), charging what billing recorded of its attempts.
    reservation_ttl_s: float = Field(900.0, gt=0)
    sweep_interval_s: float = Field(30.0, gt=0)
