"""Settings of the ingress."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings, TrustedProxies


class IngressSettings(ServiceSettings):
    """``CS_INGRESS_*``."""

    model_config = SettingsConfigDict(env_prefix="CS_INGRESS_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # How long the router has to accept a request (it answers once an adapter took it).
    route_timeout_s: float = Field(5.0, gt=0)
    # Silence on a request's reply subject this long means its adapter or router is gone. Adapters send a
    # keepalive every few seconds while an upstream is slow, so this only fires when something died.
    idle_timeout_s: float = Field(20.0, gt=0)
    # The ingress holds each attempt to its deadlines itself (a hoster's agent may not): the first chunk by
    # the attempt's first-byte deadline (never later than this ceiling), then a chunk at least every
    # ``stall_timeout_s``; keepalives do not count. Both get ``deadline_grace_s`` over what the adapter was
    # given, so an honest adapter reports the miss first. A miss is the hoster's failure: the router fails
    # over while the client has nothing, else ends the request with an error.
    first_byte_ceiling_s: float = Field(30.0, gt=0)
    stall_timeout_s: float = Field(35.0, gt=0)
    deadline_grace_s: float = Field(2.0, ge=0)
    retry_after_s: int = Field(5, ge=1)
    # A verified (or refused) key is trusted this long; a revoked key fails everywhere within it.
    key_cache_s: float = Field(2.0, ge=0, le=5)
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Larger request bodies get a 413, on every route (``BodyLimitMiddleware``: declared or streamed, the console's
    # pass-through too; the management API holds its bodies to 4 KiB). A model request's body crosses NATS
    # inside a message, so its effective limit is also the server's max_payload (1 MiB by default) less room for
    # the envelope; raise both for large images.
    max_body_bytes: int = Field(768 * 1024, ge=1024)
    # What one request's frames may hold in memory while its client does not read them (never less than two of
    # the largest NATS messages): past it the client is cut off and its request stopped, not the replica.
    max_pending_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    # What the reply subscription may hold for all requests together before NATS drops frames (the requests
    # that lose frames end with an error; see the sequence check): keep it well under the pod's memory.
    max_subscription_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024)
    # API keys that turn out wrong, per client address (the peer's, or the one a trusted proxy forwards): a
    # burst, then a rate per minute; past it, keys not in the cache get a 429 before billing is asked.
    invalid_keys_per_minute: float = Field(60.0, ge=0)
    invalid_keys_burst: int = Field(20, ge=1)
    # The proxies in front (the Ingress controller, a load balancer) whose X-Forwarded-For is believed
    # (``TrustedProxies``); none by default. Behind a proxy not named here every client shares its address.
    trusted_proxies: TrustedProxies = Field(default_factory=list)
    # /v1/models answers from a listing at most this old (0: ask a router every time).
    models_cache_s: float = Field(1.0, ge=0)
    # The console service (``services/console``) this ingress passes ``/console/*`` to, e.g.
    # ``http://127.0.0.1:8090`` (``make run``); unset, ``/console`` is not served here (in Kubernetes the load
    # balancer routes it to the console's Service).
    console_url: str | None = None
