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
    # A credit lease a router asks for is at most 1/lease_share of what the account may still spend (its
    # balance, and what its daily cap leaves): several routers can hold one, and most of the credit stays
    # with billing, which admits request by request once leases no longer fit.
    lease_share: int = Field(8, ge=2)
    # A credit lease its router did not keep alive this long is recalled from it (or, gone, taken back on what
    # billing recorded); a given-back lease keeps what its router admitted this long for admissions on the way.
    lease_ttl_s: float = Field(30.0, gt=0)
    # A usage event whose handling fails is delivered again after retry_backoff_s, doubling up to
    # retry_backoff_max_s, at most max_deliver times in all; then (or at once, if it cannot be read) it goes to
    # the DEADLETTER stream: ``computeshare deadletter list`` shows it, ``replay`` sends it again.
    # The Responses API's stored responses (``store: true``) are kept this long, as OpenAI keeps them (30
    # days), then deleted by the sweep.
    responses_retention_days: float = Field(30.0, gt=0)
    max_deliver: int = Field(8, ge=1)
    retry_backoff_s: float = Field(1.0, gt=0)
    retry_backoff_max_s: float = Field(60.0, gt=0)
