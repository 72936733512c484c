"""Settings shared by every service; each service subclasses ``ServiceSettings`` with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
