"""Management context: what a key holder's management key and a hoster's console token may read and change.

Every message here is a request/reply to billing (accounts, keys, usage, earnings) or to the router (a
hoster's live state); the web console and the ingress's management API are the askers. Amounts are
micro-credits (1 credit = 1,000,000), times are Unix seconds (UTC), days are ISO dates (``YYYY-MM-DD``, UTC).

Every query names the account (or hoster) it was authenticated for: billing answers only within it, so one
account's management key never reaches another account's keys or requests (a key or request of another
account is answered exactly as one that does not exist).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from libs.contracts.billing import GenerationRecord, KeyKind
from libs.contracts.common import CHAT, Api, Contract
from libs.contracts.hosters import ModelOffer
from libs.contracts.verification import ModelVerification

# The most days a per-day report covers.
MAX_DAYS = 366
# The most rows one listing returns.
MAX_ROWS = 500
# The longest label a key may carry.
MAX_LABEL = 100
# A key's label: printable text (no control characters: PostgreSQL's text holds no NUL, and a label is shown).
Label = Annotated[str, Field(max_length=MAX_LABEL, pattern=r"^[^\x00-\x1f\x7f]*$")]


# --- Management keys -------------------------------------------------------------------------------------


class VerifyManagementKey(Contract):
    """console -> billing (``billing.management.verify``): whose management key has this SHA-256 (hex)?"""

    key_hash: str


class ManagementKeyInfo(Contract):
    """billing -> console: the management key's account, or why it may not manage. ``not_management``: a
    valid inference key (it can call models, never manage)."""

    status: Literal["valid", "unknown", "revoked", "not_management"]
    key_id: str | None = None
    account_id: str | None = None


class AccountQuery(Contract):
    """-> billing: about the whole account (``billing.account.show``, ``billing.keys.list``)."""

    account_id: str


class ManagedKey(Contract):
    """One key of an account as its management key sees it (never the key itself, only its first
    characters). ``last_used_at``: when a request made with it was last admitted (``None``: never)."""

    key_id: str
    prefix: str
    label: str | None = None
    kind: KeyKind
    rpm: int | None = None
    tpm: int | None = None
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


class KeyListing(Contract):
    """billing -> asker: every key of the account, newest first, revoked ones included."""

    keys: list[ManagedKey]


class AccountKeyQuery(Contract):
    """-> billing (``billing.keys.show``): one key of the account."""

    account_id: str
    key_id: str


class KeyResult(Contract):
    """billing -> asker: the key after the query or change; ``None`` when the account has no such key."""

    key: ManagedKey | None = None


class CreateKey(Contract):
    """-> billing (``billing.keys.create``): a new inference key for the account (management keys are made
    by the operator only, ``computeshare key create ACCOUNT --management``)."""

    account_id: str
    label: Label | None = None
    rpm: int | None = Field(None, ge=1, le=2**31 - 1)
    tpm: int | None = Field(None, ge=1, le=2**31 - 1)


class CreatedKey(Contract):
    """billing -> asker: the new key, shown this once (only its SHA-256 is stored), and its record."""

    key: str
    info: ManagedKey


class RevokeKey(Contract):
    """-> billing (``billing.keys.revoke``): revoke one key of the account (answered with ``KeyResult``).
    Revoking twice is not an error; the first revocation time stays."""

    account_id: str
    key_id: str


class SetKeyLimits(Contract):
    """-> billing (``billing.keys.update``): change a key's limits or label (answered with ``KeyResult``).
    Only the fields named in ``update`` change; a named field set to ``None`` clears it (no limit, no
    label)."""

    account_id: str
    key_id: str
    update: list[Literal["rpm", "tpm", "label"]]
    rpm: int | None = Field(None, ge=1, le=2**31 - 1)
    tpm: int | None = Field(None, ge=1, le=2**31 - 1)
    label: Label | None = None


# --- Account ---------------------------------------------------------------------------------------------


class AccountSummary(Contract):
    """billing -> asker: the account's money now. ``spent_today`` counts charges and open holds of this UTC
    day, as the daily cap does."""

    account_id: str
    name: str
    balance: int
    reserved: int
    daily_cap: int | None
    spent_today: int
    created_at: float


class DailyUsageQuery(Contract):
    """-> billing (``billing.account.daily``): the account's usage per UTC day over the last ``days`` days
    (today included)."""

    account_id: str
    days: int = Field(30, ge=1, le=MAX_DAYS)


class DailyUsage(Contract):
    """One UTC day of an account's requests (by the day each was admitted). ``spend``: settled charges."""

    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    spend: int


class DailyUsageReport(Contract):
    """billing -> asker: every day of the window, oldest first, days without requests included as zeros."""

    days: list[DailyUsage]


class AccountRequestsQuery(Contract):
    """-> billing (``billing.account.requests``): the account's recent requests, newest first; ``before``
    (Unix seconds) pages back; ``key_id`` keeps one key's."""

    account_id: str
    limit: int = Field(50, ge=1, le=MAX_ROWS)
    before: float | None = None
    key_id: str | None = None


class AccountRequest(Contract):
    """One request of the account: who served it (the last attempt's hoster), how it went and what it cost.

    ``status`` is the money's (``open``, ``settled``, ``expired``); ``outcome`` the last attempt's
    (``succeeded``, ``failed``, ``cancelled``; ``None`` before any attempt ended). ``ttft_ms`` and
    ``duration_ms`` are the last attempt's, from its usage record."""

    request_id: str
    key_id: str
    model: str | None
    endpoint: Api = CHAT
    status: str
    outcome: str | None = None
    hoster_id: str | None = None
    attempts: int = 0
    prompt_tokens: int
    completion_tokens: int
    cost: int
    ttft_ms: float | None = None
    duration_ms: float | None = None
    created_at: float
    settled_at: float | None = None


class AccountRequests(Contract):
    """billing -> asker: requests, newest first."""

    items: list[AccountRequest]


class AccountGenerationQuery(Contract):
    """-> billing (``billing.account.generation``): the routing record of a request of the account, whichever
    of its keys made it."""

    account_id: str
    request_id: str


class AccountGenerationReply(Contract):
    """billing -> asker: the record; ``None`` when the account made no such request."""

    generation: GenerationRecord | None = None


# --- Hosters ---------------------------------------------------------------------------------------------


class VerifyHosterToken(Contract):
    """console -> billing (``billing.hoster.verify``): whose hoster console token (``ngh_...``) has this
    SHA-256 (hex)?"""

    token_hash: str


class HosterTokenInfo(Contract):
    """billing -> console: the hoster the token belongs to, or why not (``revoked``: the hoster is)."""

    status: Literal["valid", "unknown", "revoked"]
    hoster_id: str | None = None
    name: str | None = None


class HosterDailyQuery(Contract):
    """-> billing (``billing.hoster.daily``): a hoster's attempts and earnings per UTC day."""

    hoster_id: str
    days: int = Field(30, ge=1, le=MAX_DAYS)


class HosterDay(Contract):
    """One UTC day of a hoster: attempts it finished (by outcome), the tokens it reported, and what it earned
    (its ledger entries, ``hoster:<id>``, of that day)."""

    day: str
    attempts: int
    succeeded: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    earned: int


class HosterDailyReport(Contract):
    """billing -> asker: every day of the window, oldest first, with zeros; ``earned_total`` all time."""

    days: list[HosterDay]
    earned_total: int


class HosterAttemptsQuery(Contract):
    """-> billing (``billing.hoster.attempts``): the hoster's recent attempts, newest first."""

    hoster_id: str
    limit: int = Field(50, ge=1, le=MAX_ROWS)
    before: float | None = None


class HosterAttempt(Contract):
    """One attempt a hoster served: its outcome, what it reported (usage, time to first token, duration),
    and, when its request's reported usage broke the request's bounds, the discrepancy (what was reported
    and what was billed instead)."""

    request_id: str
    attempt: int
    model: str
    outcome: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    ttft_ms: float | None = None
    duration_ms: float
    error: str | None = None
    finished_at: float
    usage_discrepancy: str | None = None


class HosterAttempts(Contract):
    """billing -> asker: attempts, newest first."""

    items: list[HosterAttempt]


# --- Router: one hoster's live state -------------------------------------------------------------------


class HosterDetailQuery(Contract):
    """-> router (``router.hoster.show``): one hoster as the router sees it now."""

    hoster_id: str


class TrustTerms(Contract):
    """The trust score and each of its terms (``services/router/stats.py``; README "Routing, trust and
    failover"), with the counts they come from:

    ``score = reliability * (1 - midstream) * sqrt(latency) * (0.5 + 0.5 * history) * (1 - dishonesty)^2``
    """

    score: float
    reliability: float
    midstream: float
    latency: float
    history: float
    dishonesty: float
    # What the terms are computed from: the recent window of attempts and the hoster's whole life.
    window_attempts: int
    window_successes: int
    window_midstream_failures: int
    window_discrepancies: int
    lifetime_attempts: int
    age_s: float
    advertised_ttft_ms: float | None = None
    observed_p95_ttft_ms: float | None = None


class ModelSpeed(Contract):
    """How fast a hoster serves one model: the median of its recent times to first token (what routing uses,
    once there are 5 samples), the p95, and tokens per second (moving average); and how often its speed was
    past the model's plausibility bound (``implausible_speeds``, those attempts' timing left out of the
    figures), ``suspicious`` while one of its last 20 attempts was: routing then ranks it as slow, whatever
    the figures say."""

    model: str
    ttft_median_ms: float | None = None
    ttft_p95_ms: float | None = None
    tokens_per_s: float | None = None
    samples: int = 0
    implausible_speeds: int = 0
    suspicious: bool = False


class HosterDetail(Contract):
    """router -> asker: one hoster's live status, models and prices (micro-credits per million tokens), speed
    per model and trust with its terms."""

    hoster_id: str
    name: str
    live: bool
    cloud: bool
    region: str | None = None
    capacity: int | None = None
    in_flight: int | None = None
    cooling: bool
    models: list[ModelOffer]
    speed: list[ModelSpeed]
    trust: TrustTerms
    attempts: int
    usage_discrepancies: int = 0
    # Attempts over its models whose speed was past the model's plausibility bound (as this router saw them).
    implausible_speeds: int = 0
    # Its spot check verdict per model it serves, with the evidence (the last checks).
    verifications: list[ModelVerification] = Field(default_factory=list)


class HosterDetailReply(Contract):
    """router -> asker: the hoster, or ``None`` when the router never heard of it."""

    hoster: HosterDetail | None = None


class KeyChanged(Contract):
    """billing -> every ingress (``billing.key.changed``, broadcast): a key was revoked or its limits changed;
    forget what the key cache holds for it (the cache's TTL bounds the delay when this is lost)."""

    key_hash: str
