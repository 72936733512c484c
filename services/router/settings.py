"""Settings of the router."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.platform.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """``CS_ROUTER_*``."""

    model_config = SettingsConfigDict(env_prefix="CS_ROUTER_", populate_by_name=True, extra="ignore")

    # A hoster (and the adapter fronting it) missing from heartbeats this long is gone.
    hoster_ttl_s: float = Field(3.0, gt=0)
    # A router that starts takes no route until it heard a live hoster, or this long (adapters heartbeat
    # every second): other replicas route meanwhile.
    startup_listen_s: float = Field(2.0, ge=0)
    # How long an adapter has to accept an attempt before the router tries the next hoster.
    dispatch_timeout_s: float = Field(2.0, gt=0)
    # Retry-After sent with a 503 when no hoster can serve right now.
    retry_after_s: int = Field(5, ge=1)
    max_concurrent_routes: int = Field(512, ge=1)
    # The platform's fee on top of the hoster's price, in basis points (1000 = 10%).
    platform_fee_bps: int = Field(1000, ge=0, le=100_000)
    # Completion budget reserved for a request that sets neither max_tokens nor max_completion_tokens.
    default_max_tokens: int = Field(4096, ge=1)
    # The fastest a hoster is believed to generate, tokens per second, serving a model whose registration
    # sets no bound of its own (``computeshare model register --max-tokens-per-s``): an attempt measured past
    # it is flagged and its timing is not used to rank (README, "Speed").
    max_tokens_per_s: float = Field(5000.0, gt=0)
    # Credit leases (``services.router.leases``): a request of a key without rate limits is admitted against
    # credit billing holds for this router, asked for lease_requests requests' worth at a time (0: admit every
    # request through billing); billing is told of the admissions every lease_flush_s; a lease that admitted
    # nothing for lease_idle_s goes back; after a refusal the account's requests go to billing one by one
    # for lease_retry_s.
    lease_requests: int = Field(32, ge=0)
    lease_flush_s: float = Field(0.02, gt=0)
    lease_idle_s: float = Field(2.0, gt=0)
    lease_retry_s: float = Field(5.0, gt=0)
    # Billing takes back a lease not kept alive for its lease TTL (30 s): tell it more often.
    lease_keepalive_s: float = Field(5.0, gt=0)
    # How long billing has to admit a request before the client gets a 503.
    billing_timeout_s: float = Field(2.0, gt=0)
    # How often the router asks billing which hosters registered (and which were revoked).
    registrations_refresh_s: float = Field(5.0, gt=0)
    # How often observed hoster stats (trust included) are written to the store that survives restarts.
    stats_flush_s: float = Field(2.0, gt=0)
    # An attempt's first-byte deadline: ``first_byte_multiple`` times the hoster's observed p95 time to first
    # token (else its advertised one) plus ``first_byte_ms_per_prompt_token`` per prompt token, within
    # [floor, ceiling]; a hoster never measured gets the ceiling. The adapter also caps it with its own.
    first_byte_floor_ms: float = Field(5_000.0, gt=0)
    first_byte_ceiling_ms: float = Field(30_000.0, gt=0)
    first_byte_multiple: float = Field(4.0, ge=1)
    first_byte_ms_per_prompt_token: float = Field(0.2, ge=0)
    # Probes (``services/router/probes.py``): a hoster with fewer than ``probe_new_attempts`` attempts, or none
    # for ``probe_idle_s``, gets one unbilled request about every ``probe_interval_s`` (0 turns them off),
    # its conversation drawn from ``probe_prompts_file`` (JSON Lines, see ``services.router.covert``; unset:
    # the pool shipped beside it).
    probe_interval_s: float = Field(30.0, ge=0)
    probe_new_attempts: int = Field(20, ge=0)
    probe_idle_s: float = Field(600.0, gt=0)
    probe_prompts_file: Path | None = None
    # Spot checks (``services/router/spotchecks.py``, README "Verification"): sent by a router given the public
    # API's base URL and an API key of an account the operator funds for them (one replica is enough); each
    # (hoster, registered model) gets ``spot_checks_per_hour`` on average, at random times, at most
    # ``spot_check_concurrency`` at once; conversations from ``spot_check_prompts_file`` (unset: the probes').
    spot_check_api_base: str | None = None
    spot_check_api_key: SecretStr | None = None
    spot_checks_per_hour: float = Field(6.0, gt=0, le=36_000)
    spot_check_concurrency: int = Field(2, ge=1)
    spot_check_prompts_file: Path | None = None
    spot_check_timeout_s: float = Field(120.0, gt=0)
    spot_check_tick_s: float = Field(1.0, gt=0)
    # The largest completion limit a check asks a hoster (drawn as clients' limits are, up to this).
    spot_check_max_tokens: int = Field(512, ge=16)
    # How long a request whose serving attempt reported its end waits for the ingress's note on what reached
    # the client (counted from the attempt's first-byte deadline, when that is later), and how long a note
    # waits for the serving attempt's report; past it the request settles on what it has (no note: nothing
    # delivered, nothing billed). Above the ingress's CS_INGRESS_DEADLINE_GRACE_S (2 s), so an ingress that
    # got nothing by the deadline says so first and the request fails over.
    delivery_wait_s: float = Field(5.0, gt=0)
    # Attempts in a row whose usage claim broke a bound or the network's own count that cool the hoster down
    # (as three failures in a row do); 0 never.
    discrepancies_to_cool: int = Field(3, ge=0)
    # How often billing hears which of this router's requests are still running (their reservations must
    # outlive CS_BILLING_RESERVATION_TTL_S however long they stream): well under that TTL.
    reservation_keepalive_s: float = Field(60.0, gt=0)
    # An attempt in flight this long is over whatever was missed (its outcome lost in a reconnect): it is
    # settled on what it billed and forgotten. Longer than the adapters' CS_ADAPTER_MAX_ATTEMPT_DURATION_S.
    in_flight_max_s: float = Field(3700.0, gt=0)
