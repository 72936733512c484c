"""What the console asks billing and the routers, over NATS request/reply. It never reads their databases."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel

from libs.contracts import subjects
from libs.contracts.hosters import LiveHosters, ModelsListing
from libs.contracts.management import (
    AccountGenerationQuery,
    AccountGenerationReply,
    AccountQuery,
    AccountRequests,
    AccountRequestsQuery,
    AccountSummary,
    CreatedKey,
    CreateKey,
    DailyUsageQuery,
    DailyUsageReport,
    HosterAttempts,
    HosterAttemptsQuery,
    HosterDailyQuery,
    HosterDailyReport,
    HosterDetailQuery,
    HosterDetailReply,
    HosterTokenInfo,
    KeyListing,
    KeyResult,
    ManagementKeyInfo,
    RevokeKey,
    VerifyHosterToken,
    VerifyManagementKey,
)
from libs.platform.telemetry import inject_headers

Reply = TypeVar("Reply", bound=BaseModel)


class Unavailable(Exception):
    """Billing or the routers did not answer in time (or none runs): the page says so, with a 503."""

    def __init__(self, who: str) -> None:
        super().__init__(f"{who} did not answer; try again in a moment.")
        self.who = who


class Queries:
    """The console's questions, one method each; ``open`` hands it the lifespan's connection."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._nc: Client | None = None

    def open(self, nc: Client) -> None:
        """Use ``nc`` (owned by the app's lifespan) from now on."""
        self._nc = nc

    def close(self) -> None:
        """Stop using the connection."""
        self._nc = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (readiness)."""
        return self._nc is not None and self._nc.is_connected

    async def _ask(self, subject: str, query: BaseModel | None, reply: type[Reply], who: str) -> Reply:
        if self._nc is None:
            raise Unavailable(who)
        payload = query.model_dump_json().encode() if query is not None else b""
        try:
            message = await self._nc.request(subject, payload, timeout=self._timeout_s, headers=inject_headers())
        except (NoRespondersError, NatsTimeout, TimeoutError):
            raise Unavailable(who) from None
        return reply.model_validate_json(message.data)

    # --- the public network -------------------------------------------------------------------------------

    async def live_models(self) -> ModelsListing:
        """The models live on the network now, with their price ranges and hoster counts."""
        return await self._ask(subjects.LIST_MODELS, None, ModelsListing, "The router")

    async def hosters(self) -> LiveHosters:
        """Every hoster a router knows, live or not."""
        return await self._ask(subjects.LIST_HOSTERS, None, LiveHosters, "The router")

    # --- an account, for its management key -----------------------------------------------------------------

    async def verify_management_key(self, key_hash: str) -> ManagementKeyInfo:
        """Whose management key has this SHA-256, if it may still manage."""
        query = VerifyManagementKey(key_hash=key_hash)
        return await self._ask(subjects.VERIFY_MANAGEMENT_KEY, query, ManagementKeyInfo, "Billing")

    async def account(self, account_id: str) -> AccountSummary:
        """The account's money now."""
        return await self._ask(subjects.SHOW_ACCOUNT, AccountQuery(account_id=account_id), AccountSummary, "Billing")

    async def daily_usage(self, account_id: str, days: int) -> DailyUsageReport:
        """The account's requests, tokens and spend per UTC day, oldest first."""
        query = DailyUsageQuery(account_id=account_id, days=days)
        return await self._ask(subjects.ACCOUNT_DAILY_USAGE, query, DailyUsageReport, "Billing")

    async def requests(self, account_id: str, limit: int) -> AccountRequests:
        """The account's recent requests, newest first."""
        query = AccountRequestsQuery(account_id=account_id, limit=limit)
        return await self._ask(subjects.LIST_ACCOUNT_REQUESTS, query, AccountRequests, "Billing")

    async def generation(self, account_id: str, request_id: str) -> AccountGenerationReply:
        """The routing record of one of the account's requests."""
        query = AccountGenerationQuery(account_id=account_id, request_id=request_id)
        return await self._ask(subjects.SHOW_ACCOUNT_GENERATION, query, AccountGenerationReply, "Billing")

    async def keys(self, account_id: str) -> KeyListing:
        """Every key of the account, newest first."""
        return await self._ask(subjects.LIST_ACCOUNT_KEYS, AccountQuery(account_id=account_id), KeyListing, "Billing")

    async def create_key(self, request: CreateKey) -> CreatedKey:
        """A new inference key of the account (the key itself is in this reply only)."""
        return await self._ask(subjects.CREATE_ACCOUNT_KEY, request, CreatedKey, "Billing")

    async def revoke_key(self, account_id: str, key_id: str) -> KeyResult:
        """Revoke one key of the account."""
        query = RevokeKey(account_id=account_id, key_id=key_id)
        return await self._ask(subjects.REVOKE_ACCOUNT_KEY, query, KeyResult, "Billing")

    # --- a hoster, for its console token ----------------------------------------------------------------------

    async def verify_hoster_token(self, token_hash: str) -> HosterTokenInfo:
        """Whose hoster console token has this SHA-256."""
        query = VerifyHosterToken(token_hash=token_hash)
        return await self._ask(subjects.VERIFY_HOSTER_TOKEN, query, HosterTokenInfo, "Billing")

    async def hoster_detail(self, hoster_id: str) -> HosterDetailReply:
        """The hoster as a router sees it now: live status, models, prices, speed, trust and its terms."""
        query = HosterDetailQuery(hoster_id=hoster_id)
        return await self._ask(subjects.SHOW_HOSTER, query, HosterDetailReply, "The router")

    async def hoster_days(self, hoster_id: str, days: int) -> HosterDailyReport:
        """The hoster's attempts and earnings per UTC day, oldest first."""
        query = HosterDailyQuery(hoster_id=hoster_id, days=days)
        return await self._ask(subjects.HOSTER_DAILY, query, HosterDailyReport, "Billing")

    async def hoster_attempts(self, hoster_id: str, limit: int) -> HosterAttempts:
        """The hoster's recent attempts, newest first."""
        query = HosterAttemptsQuery(hoster_id=hoster_id, limit=limit)
        return await self._ask(subjects.LIST_HOSTER_ATTEMPTS, query, HosterAttempts, "Billing")
