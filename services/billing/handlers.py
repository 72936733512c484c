"""billing's subscribers: thin calls into the ledger and the usage records."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext

from libs.contracts import subjects
from libs.contracts.billing import (
    CreditsQuery,
    CreditsReport,
    GenerationQuery,
    GenerationRecord,
    KeyInfo,
    KeyQuery,
    KeyReport,
    LeaseCredits,
    LeasedAdmissions,
    LeaseGranted,
    LeaseRecalled,
    LeaseRefused,
    LeaseReturned,
    RecallLease,
    Refused,
    RequestFinished,
    ReservationsAlive,
    ReserveCredits,
    Reserved,
    UsageQuery,
    UsageReport,
    VerifyKey,
)
from libs.contracts.hosters import HosterRegistrations
from libs.contracts.management import (
    AccountGenerationQuery,
    AccountGenerationReply,
    AccountKeyQuery,
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
    HosterTokenInfo,
    KeyChanged,
    KeyListing,
    KeyResult,
    ManagementKeyInfo,
    RevokeKey,
    SetKeyLimits,
    VerifyHosterToken,
    VerifyManagementKey,
)
from libs.contracts.models import FetchTokenizer, RegisteredModels, TokenizerPart
from libs.contracts.stored_responses import (
    ChainQuery,
    InputItemsPage,
    InputItemsQuery,
    ResponseChain,
    ResponseQuery,
    Stored,
    StoredResponse,
    StoreResponse,
)
from libs.platform.broker import HotSubscriptions
from libs.platform.metrics import SETTLEMENTS
from services.billing.accounts import Accounts
from services.billing.durable import Batches, Redelivery, consume
from services.billing.ledger import Ledger, NotFound, Recall
from services.billing.repository import HosterRepository
from services.billing.responses import ResponseStore
from services.billing.tokenizers import ModelRegistry

# Request ids one keep-alive note may name.
MAX_ALIVE = 5000
# The refusals a recall of the account's leases may turn into an admission.
SHORT_OF_CREDIT = frozenset({"insufficient_credits", "daily_cap_reached"})
# A refusal for credit tries again if the account had a lease open or taken back this recently.
LEASES_LATELY_S = 10.0
# How long a router has to give a lease back when billing recalls it.
RECALL_TIMEOUT_S = 0.5


def register_handlers(
    broker: NatsBroker,
    hot: HotSubscriptions,
    ledger: Ledger,
    accounts: Accounts,
    hosters: HosterRepository,
    workers: int,
    redelivery: Redelivery,
    logger: logging.Logger,
    lease_share: int,
) -> Recall:
    """Request/reply subjects in the ``billing`` queue group; usage events from JetStream.

    The JetStream consumers are push consumers with a deliver group named as the durable, so it outlives
    every replica; the server spreads events over replicas and redelivers what one did
    not ack. Acks come after the database commit, and every write is idempotent on the request; an event that
    keeps failing is retried with a growing delay and then dead-lettered (``services.billing.durable``).
    """

    def js() -> JetStreamContext:
        return broker.connection.jetstream()

    async def verify_key(query: VerifyKey, _: Msg) -> KeyInfo:
        """Who holds this key, and of which kind."""
        return await accounts.verify_key(query.key_hash)

    async def reserve_credits(command: ReserveCredits, _: Msg) -> Reserved | Refused:
        """Admit a request or say why not. Refused for credit or cap while routers hold leases on the account:
        they are recalled first (what they did not admit comes back), then the request is admitted or refused
        on what is left, so no credit sits in one router's lease while another's request is refused."""
        answer = await ledger.reserve(command)
        if isinstance(answer, Refused) and answer.error.code in SHORT_OF_CREDIT:
            account_id = command.caller.account_id

            # Each recall answered takes its lease back here; one answered for a concurrent refusal (the router
            # answers a repeated recall alike) waits on its row and changes nothing. The second try comes even
            # with no lease open: one another refusal took back between this one's refusal and its look at the
            # leases left credit this one would not see otherwise. An account with no lease lately (most that
            # are out of credit: a lease needs eight times a request's cost) is refused at once.
            async def take_back(lease_id: str, router_id: str) -> None:
                admitted = await recall(lease_id, router_id)
                if admitted is not None:
                    returned = LeaseReturned(lease_id=lease_id, account_id=account_id, admitted=admitted)
                    await ledger.return_lease(returned)

            held, lately = await ledger.leases_lately(account_id, LEASES_LATELY_S)
            if lately:
                await asyncio.gather(*(take_back(lease_id, router_id) for lease_id, router_id in held))
                answer = await ledger.reserve(command)
        return answer

    async def recall(lease_id: str, router_id: str) -> int | None:
        """Have the router holding a lease admit nothing more against it: what it admitted, or ``None`` when it
        does not answer in time (gone) or holds no such lease."""
        try:
            reply = await broker.connection.request(
                subjects.lease_recall(router_id), RecallLease(lease_id=lease_id).model_dump_json().encode(),
                timeout=RECALL_TIMEOUT_S,
            )  # fmt: skip
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return None
        return LeaseRecalled.model_validate_json(reply.data).admitted

    # Every request crosses these two (a key not yet cached, then admission): on ``hot``.
    hot.add(subjects.VERIFY_KEY, VerifyKey, verify_key, queue=subjects.QUEUE_BILLING, reply=True,
            max_concurrency=workers)  # fmt: skip
    hot.add(subjects.RESERVE_CREDITS, ReserveCredits, reserve_credits, queue=subjects.QUEUE_BILLING, reply=True,
            max_concurrency=workers)  # fmt: skip

    async def lease_credits(command: LeaseCredits, _: Msg) -> LeaseGranted | LeaseRefused:
        """Grant a router a credit lease on an account, or refuse."""
        return await ledger.lease(command, lease_share)

    hot.add(subjects.LEASE_CREDITS, LeaseCredits, lease_credits, queue=subjects.QUEUE_BILLING, reply=True,
            max_concurrency=workers)  # fmt: skip

    @broker.subscriber(subjects.RESERVATIONS_ALIVE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def reservations_alive(note: ReservationsAlive) -> None:
        """Requests still running, leases still held: keep their holds from the sweeper."""
        await ledger.touch(note.request_ids[:MAX_ALIVE], note.lease_ids[:MAX_ALIVE])

    @broker.subscriber(subjects.SHOW_CREDITS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_credits(query: CreditsQuery) -> CreditsReport | None:
        """An account's money."""
        try:
            state = await ledger.account(query.account_id)
        except NotFound:
            return None
        return CreditsReport(
            account_id=state.id,
            balance=state.balance,
            reserved=state.reserved,
            spent_today=state.spent_today,
            daily_cap=state.daily_cap,
        )

    @broker.subscriber(subjects.SHOW_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_key(query: KeyQuery) -> KeyReport | None:
        """A key's limits and spend, and its account's money, for the key itself."""
        return await ledger.key_report(query.key_id, query.account_id)

    @broker.subscriber(subjects.LIST_USAGE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def list_usage(query: UsageQuery) -> UsageReport:
        """An account's recent requests."""
        return UsageReport(items=await ledger.usage(query.account_id, query.limit, query.key_id))

    @broker.subscriber(subjects.SHOW_GENERATION, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_generation(query: GenerationQuery) -> GenerationRecord | None:
        """A request's routing record, for the key that made it."""
        return await accounts.key_generation(query.key_id, query.request_id)

    @broker.subscriber(subjects.LIST_REGISTRATIONS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def list_registrations() -> HosterRegistrations:
        """Every registered hoster, for routing."""
        return await hosters.registrations()

    # The usage events, from JetStream, on ``hot`` too: every request brings one settlement.
    async def settle_alone(message: Msg) -> None:
        async def work(body: bytes) -> None:
            settled = await ledger.settle(RequestFinished.model_validate_json(body))
            SETTLEMENTS.labels("settled" if settled else "duplicate").inc()

        await consume(message, work, redelivery, js(), subjects.BILLING_REQUESTS_DURABLE, logger)

    async def settle_together(messages: list[Msg]) -> None:
        events = [RequestFinished.model_validate_json(m.data) for m in messages]
        settled = await ledger.settle_many(events)
        SETTLEMENTS.labels("settled").inc(settled)
        SETTLEMENTS.labels("duplicate").inc(len(events) - settled)

    settlements = Batches(settle_together, settle_alone)

    async def settle_request(message: Msg) -> None:
        """Charge a finished request and release what it did not use, together with those arriving meanwhile."""
        await settlements.add(message)

    hot.add_durable(subjects.REQUEST_FINISHED, subjects.USAGE_STREAM, subjects.BILLING_REQUESTS_DURABLE,
                    settle_request, workers)  # fmt: skip

    async def lease_event(message: Msg) -> None:
        """Record the requests a router admitted against a lease, or take a lease back."""

        async def work(body: bytes) -> None:
            if message.subject == subjects.LEASE_RETURNED:
                await ledger.return_lease(LeaseReturned.model_validate_json(body))
            else:
                await ledger.record_leased(LeasedAdmissions.model_validate_json(body))

        await consume(message, work, redelivery, js(), subjects.BILLING_LEASES_DURABLE, logger)

    hot.add_durable(subjects.LEASE_EVENTS_ALL, subjects.USAGE_STREAM, subjects.BILLING_LEASES_DURABLE,
                    lease_event, workers)  # fmt: skip
    return recall


def register_management_handlers(
    broker: NatsBroker, accounts: Accounts, hosters: HosterRepository, workers: int
) -> None:
    """What a management key (through the ingress's API or the console) and a hoster's console token may ask,
    in the ``billing`` queue group. Every query is answered within the account or hoster it names, which the
    asker authenticated; a key that changes is announced to every ingress (``KEY_CHANGED``) to leave its
    cache at once."""

    async def key_changed(key_hash: str) -> None:
        await broker.publish(KeyChanged(key_hash=key_hash), subjects.KEY_CHANGED)

    @broker.subscriber(subjects.VERIFY_MANAGEMENT_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def verify_management_key(query: VerifyManagementKey) -> ManagementKeyInfo:
        """Whose management key this is."""
        return await accounts.verify_management_key(query.key_hash)

    @broker.subscriber(subjects.LIST_ACCOUNT_KEYS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def list_keys(query: AccountQuery) -> KeyListing:
        """Every key of the account."""
        return KeyListing(keys=await accounts.keys(query.account_id))

    @broker.subscriber(subjects.SHOW_ACCOUNT_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_key(query: AccountKeyQuery) -> KeyResult:
        """One key of the account."""
        return KeyResult(key=await accounts.key(query.account_id, query.key_id))

    @broker.subscriber(subjects.CREATE_ACCOUNT_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def create_key(command: CreateKey) -> CreatedKey:
        """A new inference key of the account, shown once."""
        return await accounts.create_key(command.account_id, command.rpm, command.tpm, label=command.label)

    @broker.subscriber(subjects.REVOKE_ACCOUNT_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def revoke_key(command: RevokeKey) -> KeyResult:
        """Revoke a key of the account."""
        revoked = await accounts.revoke_account_key(command.account_id, command.key_id)
        if revoked is None:
            return KeyResult()
        await key_changed(revoked[1])
        return KeyResult(key=revoked[0])

    @broker.subscriber(subjects.UPDATE_ACCOUNT_KEY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def update_key(command: SetKeyLimits) -> KeyResult:
        """Change a key's limits or label."""
        updated = await accounts.update_key(command)
        if updated is None:
            return KeyResult()
        await key_changed(updated[1])
        return KeyResult(key=updated[0])

    @broker.subscriber(subjects.SHOW_ACCOUNT, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_account(query: AccountQuery) -> AccountSummary | None:
        """The account's money now."""
        return await accounts.summary(query.account_id)

    @broker.subscriber(subjects.ACCOUNT_DAILY_USAGE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def daily_usage(query: DailyUsageQuery) -> DailyUsageReport:
        """The account's usage per UTC day."""
        return DailyUsageReport(days=await accounts.daily_usage(query.account_id, query.days))

    @broker.subscriber(subjects.LIST_ACCOUNT_REQUESTS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def account_requests(query: AccountRequestsQuery) -> AccountRequests:
        """The account's recent requests."""
        return AccountRequests(items=await accounts.requests(query))

    @broker.subscriber(subjects.SHOW_ACCOUNT_GENERATION, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def account_generation(query: AccountGenerationQuery) -> AccountGenerationReply:
        """The routing record of a request of the account."""
        return AccountGenerationReply(generation=await accounts.generation(query.account_id, query.request_id))

    @broker.subscriber(subjects.VERIFY_HOSTER_TOKEN, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def verify_hoster_token(query: VerifyHosterToken) -> HosterTokenInfo:
        """Whose console token this is."""
        return await hosters.verify_console_token(query.token_hash)

    @broker.subscriber(subjects.HOSTER_DAILY, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def hoster_daily(query: HosterDailyQuery) -> HosterDailyReport:
        """A hoster's attempts and earnings per UTC day."""
        return await hosters.daily(query.hoster_id, query.days)

    @broker.subscriber(subjects.LIST_HOSTER_ATTEMPTS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def hoster_attempts(query: HosterAttemptsQuery) -> HosterAttempts:
        """A hoster's recent attempts."""
        return HosterAttempts(items=await hosters.attempts(query))


def register_model_handlers(broker: NatsBroker, registry: ModelRegistry, workers: int) -> None:
    """The model registry's one question, in the ``billing`` queue group: a registered model's tokenizer."""

    @broker.subscriber(subjects.FETCH_TOKENIZER, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def fetch_tokenizer(query: FetchTokenizer) -> TokenizerPart:
        """One part of a model's tokenizer bundle, or ``unchanged`` / ``not_registered``."""
        return await registry.fetch(query)

    @broker.subscriber(subjects.LIST_TOKENIZERS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def list_tokenizers() -> RegisteredModels:
        """Every model registered with its tokenizer, and the speed bounds registrations set."""
        current = await registry.current()
        bounds = {r.model: r.max_tokens_per_s for r in current if r.max_tokens_per_s is not None}
        references = await registry.references()
        return RegisteredModels(models=[r.model for r in current], max_tokens_per_s=bounds, references=references)


def register_response_handlers(broker: NatsBroker, store: ResponseStore, workers: int) -> None:
    """The Responses API's stored responses, in the ``billing`` queue group (the ingress asks)."""

    @broker.subscriber(subjects.STORE_RESPONSE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def store_response(event: StoreResponse) -> Stored:
        """Keep a response; a second store of its id changes nothing."""
        return Stored(ok=await store.store(event))

    @broker.subscriber(subjects.SHOW_RESPONSE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_response(query: ResponseQuery) -> StoredResponse:
        """A stored response, for its account."""
        return await store.show(query)

    @broker.subscriber(subjects.DELETE_RESPONSE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def delete_response(query: ResponseQuery) -> Stored:
        """Delete a stored response of the account."""
        return Stored(ok=await store.delete(query))

    @broker.subscriber(subjects.LIST_RESPONSE_INPUT_ITEMS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def response_input_items(query: InputItemsQuery) -> InputItemsPage:
        """A page of a stored response's input items."""
        return await store.input_items(query)

    @broker.subscriber(subjects.RESPONSE_CHAIN, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def response_chain(query: ChainQuery) -> ResponseChain:
        """What continuing a stored response replays."""
        return await store.chain(query)
