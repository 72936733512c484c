"""Billing context: API keys, admission (reservations and rate limits), settlement, account queries."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from libs.contracts.common import CHAT, Api, Contract, ErrorReport, Price, Usage
from libs.contracts.verification import VerdictName


class VerifyKey(Contract):
    """ingress -> billing: who holds the key with this SHA-256 (hex)?"""

    key_hash: str


# An inference key calls models; a management key (OpenRouter's provisioning key) manages its account's keys
# and reads the whole account, and never calls models.
KeyKind = Literal["inference", "management"]
INFERENCE: KeyKind = "inference"
MANAGEMENT: KeyKind = "management"


class KeyInfo(Contract):
    """billing -> ingress: the key's account, kind and limits, or why it is not valid."""

    status: Literal["valid", "unknown", "revoked"]
    key_id: str | None = None
    account_id: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    kind: KeyKind = INFERENCE


class Caller(Contract):
    """The authenticated caller of a request, carried from ingress to router and billing."""

    account_id: str
    key_id: str
    rpm: int | None = None
    tpm: int | None = None


class ReservationsAlive(Contract):
    """router -> billing: requests still running on this router; their reservations are not stale. And the
    credit leases it holds (``LeaseCredits``): they are not stale either."""

    request_ids: list[str]
    lease_ids: list[str] = Field(default_factory=list)


class LeaseCredits(Contract):
    """router -> billing (request/reply): hold up to ``amount`` of the account's credit for this router, which
    admits the account's requests against it without asking billing each time. Billing grants at most a
    fraction of what the account can spend (balance and daily cap), and nothing below ``minimum``. The router
    names the lease, so it can give back a lease whose grant it never heard of (the answer was lost)."""

    lease_id: str
    account_id: str
    router_id: str
    amount: int = Field(gt=0, description="wanted, micro-credits")
    minimum: int = Field(gt=0, description="less than this is refused, micro-credits")


class LeaseGranted(Contract):
    """billing -> router: the lease (``amount`` is held from the account's balance and counted in its day)."""

    status: Literal["granted"] = "granted"
    lease_id: str
    amount: int
    # Unix time after which the lease admits nothing (shortly before the end of the UTC day it counts in: a
    # request of the next day counts in that day's cap).
    until: float


class LeaseRefused(Contract):
    """billing -> router: no lease (too little to spend, or an unknown account): admit request by request."""

    status: Literal["refused"] = "refused"


LeaseAnswer = Annotated[LeaseGranted | LeaseRefused, Field(discriminator="status")]


class LeasedAdmission(Contract):
    """One request a router admitted against a lease: ``amount`` of the lease is now its reservation."""

    request_id: str
    key_id: str
    amount: int = Field(ge=0)
    fee_bps: int
    endpoint: Api = CHAT


class LeasedAdmissions(Contract):
    """router -> JetStream -> billing: requests admitted against ``lease_id`` since the last such event (sent in
    batches, off the request's path): billing records their reservations, so a request whose router dies is
    still charged for what its hosters reported, as any other."""

    lease_id: str
    admissions: list[LeasedAdmission]


class RecallLease(Contract):
    """billing -> the router holding ``lease_id`` (request/reply, answered with ``LeaseRecalled``): the
    account's credit ran short, or the lease looks stale; admit nothing more against the lease. Billing takes
    back what it did not admit at once, so the account's remaining credit serves whichever router its next
    request reaches."""

    lease_id: str


class LeaseRecalled(Contract):
    """router -> billing: the answer to ``RecallLease``: what the lease admitted in all (``None``: this router
    holds no such lease, e.g. it gave it back already; billing then leaves it to that event)."""

    lease_id: str
    admitted: int | None = None


class LeaseReturned(Contract):
    """router -> JetStream -> billing: the router admits nothing more against ``lease_id``; its requests took
    ``admitted`` of it in all (their reservations, recorded or still on the way). The rest goes back to the
    balance."""

    lease_id: str
    account_id: str
    admitted: int = Field(ge=0)


class ReserveCredits(Contract):
    """router -> billing: admit a request, atomically: rate limits, then its maximum cost against the
    balance and the daily cap."""

    request_id: str
    caller: Caller
    amount: int = Field(ge=0, description="maximum cost, micro-credits")
    tokens: int = Field(ge=0, description="prompt estimate plus completion budget, for tokens per minute")
    fee_bps: int
    endpoint: Api = CHAT


class RateLimitState(Contract):
    """Where the key stands in its current window, for the ``x-ratelimit-*`` headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers for the limits that are set."""
        out: dict[str, str] = {}
        reset = f"{self.reset_s:.3f}s"
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.remaining_requests or 0))
            out["x-ratelimit-reset-requests"] = reset
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.remaining_tokens or 0))
            out["x-ratelimit-reset-tokens"] = reset
        return out


class Reserved(Contract):
    """billing -> router: the request is admitted; its maximum cost is held."""

    status: Literal["reserved"] = "reserved"
    rate: RateLimitState


class Refused(Contract):
    """billing -> router: not admitted (402 credits or cap, 429 rate limit)."""

    status: Literal["refused"] = "refused"
    error: ErrorReport
    rate: RateLimitState


Admission = Annotated[Reserved | Refused, Field(discriminator="status")]


class BilledAttempt(Contract):
    """One attempt as billing charges it; only attempts the client received something from are billed, at the
    prices of their dispatch (``services.router.service.charge``)."""

    attempt: int
    hoster_id: str
    # The usage billed: what the hoster reported, held to the request's bounds (``UsageBounds``).
    usage: Usage
    input_price: Price
    output_price: Price
    # Set when the hoster's report broke a bound: what it reported and what was billed instead.
    usage_discrepancy: str | None = None
    # The network counted this usage (the model's registered tokenizer: the router the prompt, the ingress the
    # completion it relayed) and billed at most its count; ``False``: only the byte bounds held the claim.
    usage_counted: bool = False


class DispatchRecord(Contract):
    """One attempt a router dispatched and a hoster took, as the router recorded it: the dispatch's prices,
    the router's verdict, the time on the router's clock and the ingress's, what the client received
    (``chunks_sent``: frames of content), and the hoster's claimed usage beside it. Billing keeps these as the
    request's routing record; nothing of it is the hoster's word alone."""

    attempt: int = Field(ge=1)
    hoster_id: str
    adapter_id: str
    model: str
    stream: bool
    outcome: Literal["succeeded", "failed", "cancelled"]
    # The usage the hoster claimed (0 when it reported none), held to what a record can hold.
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    usage_estimated: bool = False
    input_price: Price
    output_price: Price
    chunks_sent: int = Field(ge=0)
    finish_reason: str | None = None
    error: str | None = None
    ttft_ms: float | None = Field(None, ge=0)
    duration_ms: float = Field(ge=0)
    finished_at: float
    dropped_parameters: list[str] = Field(default_factory=list)
    # The hoster's spot check verdict on the model when the attempt ended (``services.router.verification``).
    verification: VerdictName = "unchecked"


class RequestFinished(Contract):
    """router -> JetStream -> billing: the request is over; charge its billed attempts, release the rest,
    and keep ``records`` (every attempt it dispatched that a hoster took) as its routing record."""

    request_id: str
    account_id: str
    model: str
    outcome: Literal["succeeded", "failed", "cancelled"]
    fee_bps: int
    attempts: list[BilledAttempt]
    finished_at: float
    # Set when the request was admitted against a credit lease: its reservation, should billing not have
    # recorded it yet (``LeasedAdmissions`` travel in batches).
    leased: LeasedAdmission | None = None
    lease_id: str | None = None
    records: list[DispatchRecord] = Field(default_factory=list)


class CreditsQuery(Contract):
    """ingress -> billing: an account's balance."""

    account_id: str


class CreditsReport(Contract):
    """billing -> ingress: balance, open reservations, today's spend and the daily cap (micro-credits)."""

    account_id: str
    balance: int
    reserved: int
    spent_today: int
    daily_cap: int | None


class KeyQuery(Contract):
    """ingress -> billing: the caller's own key and its account's money, for ``GET /v1/key``."""

    key_id: str
    account_id: str


class KeyReport(Contract):
    """billing -> ingress: one key (its shown prefix, its limits) and what it and its account spent and can
    still spend (micro-credits). The key's spend counts its settled charges by the UTC day its requests were
    admitted on; the account's ``spent_today`` counts charges and open holds, as the daily cap does."""

    key_id: str
    prefix: str
    rpm: int | None
    tpm: int | None
    balance: int
    daily_cap: int | None
    spent_today: int
    usage: int
    usage_daily: int
    usage_weekly: int
    usage_monthly: int


class UsageQuery(Contract):
    """ingress -> billing: an account's recent requests; with ``key_id``, only those that key made."""

    account_id: str
    limit: int = Field(50, ge=1, le=500)
    key_id: str | None = None


class UsageItem(Contract):
    """One settled request of an account."""

    request_id: str
    model: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    created_at: float
    settled_at: float | None


class UsageReport(Contract):
    """billing -> ingress: recent requests, newest first."""

    items: list[UsageItem]


class GenerationQuery(Contract):
    """ingress -> billing: the routing record of a request, for the key that made it."""

    request_id: str
    key_id: str


class AttemptRecord(Contract):
    """One attempt of a request as billing recorded it."""

    attempt: int
    hoster_id: str
    model: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float
    error: str | None = None
    dropped_parameters: list[str] = Field(default_factory=list)
    # The hoster's spot check verdict on the model when the attempt ended (``None``: recorded before them).
    verification: VerdictName | None = None


class GenerationRecord(Contract):
    """billing -> ingress: who served a request, how each attempt went, what it cost (credits)."""

    id: str
    model: str | None
    endpoint: Api = CHAT
    status: str
    created: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    # Set when a hoster reported usage past the request's bounds: what it reported, and what was billed.
    usage_discrepancy: str | None = None
    # Whether the usage billed was the network's own count (``True``: every billed attempt's, with its model's
    # registered tokenizer) or the hosters' claims held to byte bounds only (``False``: "usage not verified");
    # ``None`` when nothing was billed, or the request settled before the network said.
    usage_verified: bool | None = None
    attempts: list[AttemptRecord]
