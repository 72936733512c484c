"""Settings shared by every service; each service subclasses ``ServiceSettings`` with its own env prefix."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _networks(value: object) -> object:
    """The comma-separated addresses and networks of ``value``, each checked to be one."""
    if not isinstance(value, str | list):
        return value
    entries = value if isinstance(value, list) else [e.strip() for e in value.split(",") if e.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or network: name the proxies' addresses or networks "
                "(anyone could write X-Forwarded-For past a wildcard)"
            ) from None
    return entries


# The proxies an HTTP service believes X-Forwarded-For and X-Forwarded-Proto from, as addresses or networks
# separated by commas ("10.0.0.0/8,192.0.2.7"; empty: none, the peer's address is the client's). Behind one,
# the client is the right-most address of X-Forwarded-For that is not a trusted proxy (uvicorn's
# ProxyHeadersMiddleware); "*" is refused, as it would let every client choose its own address.
TrustedProxies = Annotated[list[str], NoDecode, BeforeValidator(_networks)]


class ServiceSettings(BaseSettings):
    """Fields every service reads, under fixed ``CS_`` names so one environment configures the whole stack.

    A subclass sets ``model_config = SettingsConfigDict(env_prefix="CS_<SERVICE>_")`` for its own fields.
    """

    model_config = SettingsConfigDict(env_prefix="CS_", populate_by_name=True, extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias="CS_NATS_URL")
    # The process's NATS credentials file (JWT and seed): the server accepts no anonymous client, and the
    # permissions in the JWT confine what this process may publish and subscribe to.
    nats_creds: Path | None = Field(None, validation_alias="CS_NATS_CREDS")
    log_level: str = Field("INFO", validation_alias="CS_LOG_LEVEL")
    log_format: str = Field("json", validation_alias="CS_LOG_FORMAT", pattern="^(json|text)$")
    instance_id: str = Field("", validation_alias="CS_INSTANCE_ID")
    # Where services without an HTTP server of their own serve /metrics, /healthz and /readyz (0: nowhere).
    metrics_port: int = Field(9090, ge=0, le=65535, validation_alias="CS_METRICS_PORT")
    # Replicas of the JetStream streams and key-value buckets the services create (3 on a 3-node cluster).
    nats_stream_replicas: int = Field(1, ge=1, le=5, validation_alias="CS_NATS_STREAM_REPLICAS")
