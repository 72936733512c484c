"""billing's subscribers: thin calls into the ledger and the usage records."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
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
from libs.contracts.routing import AttemptFinished
from libs.platform.broker import HotSubscriptions
from libs.platform.metrics import SETTLEMENTS
from services.billing.durable import Batches, Redelivery, consume
from services.billing.ledger import Ledger, NotFound
from services.billing.repository import HosterRepository, UsageRepository

# Request ids one keep-alive note may name.
MAX_ALIVE = 5000


def register_handlers(
    broker: NatsBroker,
    hot: HotSubscriptions,
    ledger: Ledger,
    usage: UsageRepository,
    hosters: HosterRepository,
    workers: int,
    redelivery: Redelivery,
    logger: logging.Logger,
) -> None:
    """Request/reply subjects in the ``billing`` queue group; usage events from JetStream.

    The JetStream consumers are push consumers with a deliver group named as the durable, so it outlives
    every replica; the server spreads events over replicas and redelivers what one did
    not ack. Acks come after the database commit, and every write is idempotent on the request; an event that
    keeps failing is retried with a growing delay and then dead-lettered (``services.billing.durable``).
    """

    def js() -> JetStreamContext:
        return broker.connection.jetstream()

    async def verify_key(query: VerifyKey, _: Msg) -> KeyInfo:
        """Who holds this key."""
        return await ledger.verify_key(query.key_hash)

    async def reserve_credits(command: ReserveCredits, _: Msg) -> Reserved | Refused:
        """Admit a request or say why not."""
        return await ledger.reserve(command)

    # Every request crosses these two (a key not yet cached, then admission): on ``hot``.
    hot.add(subjects.VERIFY_KEY, VerifyKey, verify_key, queue=subjects.QUEUE_BILLING, reply=True,
            max_concurrency=workers)  # fmt: skip
    hot.add(subjects.RESERVE_CREDITS, ReserveCredits, reserve_credits, queue=subjects.QUEUE_BILLING, reply=True,
            max_concurrency=workers)  # fmt: skip

    @broker.subscriber(subjects.RESERVATIONS_ALIVE, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def reservations_alive(note: ReservationsAlive) -> None:
        """Requests still running: keep their holds from the sweeper."""
        await ledger.touch(note.request_ids[:MAX_ALIVE])

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
        return UsageReport(items=await ledger.usage(query.account_id, query.limit))

    @broker.subscriber(subjects.SHOW_GENERATION, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def show_generation(query: GenerationQuery) -> GenerationRecord | None:
        """A request's routing record, for the key that made it."""
        return await ledger.generation(query.request_id, query.key_id)

    @broker.subscriber(subjects.LIST_REGISTRATIONS, queue=subjects.QUEUE_BILLING, max_workers=workers)
    async def list_registrations() -> HosterRegistrations:
        """Every registered hoster, for routing."""
        return await hosters.registrations()

    # The usage events, from JetStream, on ``hot`` too: every request brings two.
    def reported_by_its_hoster(message: Msg) -> AttemptFinished | None:
        """The attempt, unless a hoster reports on another's (the subject names the reporter: the server lets
        a hoster publish under its own id alone)."""
        event = AttemptFinished.model_validate_json(message.data)
        return event if event.hoster_id == subjects.hoster_of(message.subject) else None

    async def record_alone(message: Msg) -> None:
        async def work(_: bytes) -> None:
            event = reported_by_its_hoster(message)
            if event is not None:
                await usage.record_attempt(event)

        await consume(message, work, redelivery, js(), subjects.BILLING_ATTEMPTS_DURABLE, logger)

    async def record_together(messages: list[Msg]) -> None:
        events = [e for e in (reported_by_its_hoster(m) for m in messages) if e is not None]
        await usage.record_attempts(events)

    attempts = Batches(record_together, record_alone)

    async def record_attempt(message: Msg) -> None:
        """Record one finished attempt, written together with those arriving meanwhile."""
        await attempts.add(message)

    hot.add_durable(subjects.ATTEMPT_FINISHED_ALL, subjects.USAGE_STREAM, subjects.BILLING_ATTEMPTS_DURABLE,
                    record_attempt, workers)  # fmt: skip

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
