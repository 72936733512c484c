"""billing's subscribers."""

from __future__ import annotations

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker

from libs.contracts import subjects
from libs.contracts.routing import AttemptFinished
from services.billing.repository import UsageRepository


def register_handlers(broker: NatsBroker, usage: UsageRepository, workers: int) -> None:
    """Consume attempt outcomes from JetStream through a durable consumer shared by every replica.

    A push consumer with a deliver group; nats-py names the durable consumer after the queue group, so it
    outlives every replica. The server spreads events over the replicas and redelivers what a replica did
    not ack (a pull consumer would do too, but faststream 0.7.8 mishandles nats-py 2.16's
    empty-batch timeout).
    """

    @broker.subscriber(
        subjects.ATTEMPT_FINISHED_ALL,
        queue=subjects.QUEUE_BILLING,
        stream=JStream(subjects.ATTEMPTS_STREAM, declare=False),
        max_workers=workers,
        # Acked only once the row is committed; a failure redelivers, and the insert is idempotent.
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def record_usage(event: AttemptFinished) -> None:
        """Record one finished attempt."""
        await usage.record_attempt(event)
