"""Settings of the billing service."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    """``CS_BILLING_*``; the database URL carries a password, so it has no default."""

    model_config = SettingsConfigDict(env_prefix="CS_BILLING_", populate_by_name=True, extra="ignore")

    database_url: SecretStr
    pool_min_size: int = Field(1, ge=1)
    pool_max_size: int = Field(10, ge=1)
    # Usage events handled at once by one replica.
    workers: int = Field(16, ge=1)
