"""Settings of the hoster adapter: which hosters it fronts and how it talks to them."""

from __future__ import annotations

import tomllib
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from libs.contracts.common import CHAT, MAX_DURATION_MS, Endpoint
from libs.contracts.frames import MAX_ATTEMPT_BYTES, MAX_ATTEMPT_DURATION_S, MIN_KEEPALIVE_INTERVAL_S
from libs.contracts.hosters import (
    HOSTER_TAG,
    MAX_HEARTBEAT_INTERVAL_S,
    MAX_MODELS_PER_HOSTER,
    MAX_UPSTREAM_MODEL_LENGTH,
    ModelId,
    ModelOffer,
    Name,
    Quantization,
)
from libs.platform.natsauth import creds_jwt, decode_jwt
from libs.platform.settings import ServiceSettings
from services.hoster_adapter.profiles import ProfileName

MICRO = 1_000_000
Capability = Literal["tools", "json", "vision"]
# What OpenAI-compatible servers (vLLM, llama.cpp, Ollama) handle for most chat models.
DEFAULT_CAPABILITIES: tuple[Capability, ...] = ("tools", "json")


class HostedModel(BaseModel):
    """A model one hoster serves. Prices are in credits per million tokens (converted to micro-credits)."""

    name: ModelId
    upstream_model: str | None = Field(None, min_length=1, max_length=MAX_UPSTREAM_MODEL_LENGTH)
    input_price: Decimal = Field(ge=0)
    output_price: Decimal = Field(ge=0)
    context_length: int | None = Field(None, ge=1)
    capabilities: list[Capability] = Field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    endpoints: list[Endpoint] = Field(
        default_factory=lambda: [CHAT],
        min_length=1,
        description="the OpenAI endpoints it serves: chat.completions, completions, embeddings",
    )
    # How the served weights are quantized (OpenRouter's names: "bf16", "fp8", "int4", ...): requests with
    # ``provider.quantizations`` go only to hosters that declared one of theirs.
    quantization: Quantization | None = None

    def offer(self) -> ModelOffer:
        """The model as announced in heartbeats."""
        return ModelOffer(
            model=self.name,
            upstream_model=self.upstream_model or self.name,
            input_price=int(self.input_price * MICRO),
            output_price=int(self.output_price * MICRO),
            context_length=self.context_length,
            capabilities=list(self.capabilities),
            endpoints=list(dict.fromkeys(self.endpoints)),
            quantization=self.quantization,
        )


class HosterConfig(BaseModel):
    """One hoster: an OpenAI-compatible server (vLLM, llama.cpp, Ollama, a cloud provider) and its models."""

    id: str
    name: Name
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://gpu-box:8000/v1")
    api_key: SecretStr | None = None
    cloud: bool = False
    region: Name | None = None
    capacity: int = Field(64, ge=1, description="requests this hoster serves at once")
    advertised_ttft_ms: float | None = Field(
        None, gt=0, le=MAX_DURATION_MS, description="the time to first token it promises"
    )
    profile: ProfileName = Field("openai", description="the kind of server: which parameters it takes, as what")
    models: list[HostedModel] = Field(min_length=1, max_length=MAX_MODELS_PER_HOSTER)

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return str(uuid.UUID(value))

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class AdapterSettings(ServiceSettings):
    """``CS_ADAPTER_*``: hosters come as a JSON list in ``CS_ADAPTER_HOSTERS`` or a JSON file."""

    model_config = SettingsConfigDict(env_prefix="CS_ADAPTER_", populate_by_name=True, extra="ignore")

    hosters: list[HosterConfig] = Field(default_factory=list)
    hosters_file: Path | None = None
    heartbeat_interval_s: float = Field(1.0, gt=0, le=MAX_HEARTBEAT_INTERVAL_S)
    keepalive_interval_s: float = Field(5.0, ge=MIN_KEEPALIVE_INTERVAL_S)
    connect_timeout_s: float = Field(5.0, gt=0)
    # Longest wait for the upstream's next byte (its first token included) before the attempt fails.
    read_timeout_s: float = Field(120.0, gt=0)
    max_connections: int = Field(512, ge=1)
    # On SIGTERM, running attempts get this long to finish before they are cancelled (and billed as such).
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Bounds on what one upstream may send in one attempt: a hoster is untrusted input. Breaking one fails the
    # attempt with an error naming it, and the upstream request is closed.
    # The longest SSE line (one chunk's JSON); a line that never ends fails the attempt here.
    max_line_bytes: int = Field(1 << 20, ge=1024)
    # How much of an error answer's body is read (for the routing record's error); the rest is never read.
    max_error_body_bytes: int = Field(4096, ge=0)
    # Bytes of one attempt's whole response body, and the longest it may last (from sending the request); at
    # most the bounds a hoster's NATS response permission is derived from (``libs/contracts/frames.py``).
    max_attempt_bytes: int = Field(MAX_ATTEMPT_BYTES, ge=1024, le=MAX_ATTEMPT_BYTES)
    max_attempt_duration_s: float = Field(MAX_ATTEMPT_DURATION_S, gt=0, le=MAX_ATTEMPT_DURATION_S)
    # A non-streaming client's assembled completion: its bytes of content (text, reasoning, tool calls,
    # logprobs) and its choices beyond the request's ``n``. One NATS message carries it, so the effective
    # budget is also kept under the server's max_payload.
    max_completion_bytes: int = Field(900_000, ge=1024)
    max_choices: int = Field(128, ge=1)
    # The longest wait for the first chunk (from sending the request); a dispatch's ``first_byte_deadline_ms``
    # may ask for less, never more. Then the longest silence between two chunks. Past either the attempt
    # fails (``first_byte_timeout`` / ``stalled``), so the router fails over and counts it against the hoster.
    first_byte_timeout_s: float = Field(30.0, gt=0)
    stall_timeout_s: float = Field(30.0, gt=0)

    def all_hosters(self) -> list[HosterConfig]:
        """Hosters from the environment and from ``hosters_file``; each id may appear once. An agent (its
        credentials name one hoster) fronts that hoster alone."""
        hosters = list(self.hosters)
        if self.hosters_file is not None:
            raw = orjson.loads(self.hosters_file.read_bytes())
            hosters += [HosterConfig.model_validate(item) for item in raw]
        ids = [h.id for h in hosters]
        if len(ids) != len(set(ids)):
            raise ValueError("a hoster id appears twice in the adapter's configuration")
        own = self.agent_hoster_id()
        if own is not None and ids != [own]:
            raise ValueError(f"these credentials are hoster {own}'s: the agent fronts that hoster alone")
        return hosters

    def agent_hoster_id(self) -> str | None:
        """The hoster whose credentials this adapter runs with, or ``None`` for a platform adapter."""
        if self.nats_creds is None:
            return None
        return hoster_of_credentials(self.nats_creds.read_text())


def hoster_of_credentials(creds: str) -> str | None:
    """The hoster id a credentials file was minted for (its ``hoster:<id>`` tag), if any."""
    tags = decode_jwt(creds_jwt(creds)).get("nats", {}).get("tags") or []
    for tag in tags:
        if tag.startswith(HOSTER_TAG):
            return str(uuid.UUID(tag[len(HOSTER_TAG) :]))
    return None


class AgentConfig(BaseModel):
    """The small file a GPU owner writes next to the agent: what the upstream serves, at what price.

    Who the hoster is (its id, name, region, cloud) comes from its registration, not from this file.
    """

    models: list[HostedModel] = Field(min_length=1, max_length=MAX_MODELS_PER_HOSTER)
    capacity: int = Field(16, ge=1)
    profile: ProfileName = "openai"
    advertised_ttft_ms: float | None = Field(None, gt=0, le=MAX_DURATION_MS)
    upstream_api_key: SecretStr | None = None

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """From a ``.toml`` or ``.json`` file."""
        data = path.read_bytes()
        if path.suffix == ".toml":
            return cls.model_validate(tomllib.loads(data.decode()))
        return cls.model_validate_json(data)

    def hoster(self, hoster_id: str, name: str, upstream_url: str) -> HosterConfig:
        """The hoster this agent fronts."""
        return HosterConfig(
            id=hoster_id,
            name=name,
            base_url=upstream_url,
            api_key=self.upstream_api_key,
            capacity=self.capacity,
            advertised_ttft_ms=self.advertised_ttft_ms,
            profile=self.profile,
            models=self.models,
        )
