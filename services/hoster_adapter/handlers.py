"""The adapter's subscribers: take attempts for the hosters it fronts, stop cancelled ones."""

from __future__ import annotations

from faststream.nats import NatsBroker

from libs.contracts import subjects
from libs.contracts.routing import AttemptDispatch, RequestCancelled
from libs.platform.broker import current_message
from services.hoster_adapter.upstream import HosterAdapter


def register_handlers(broker: NatsBroker, adapter: HosterAdapter) -> None:
    """Subscribe one queue-group subject per fronted hoster for attempts, and one for their cancels."""

    async def start_attempt(dispatch: AttemptDispatch) -> None:
        """Accept (or refuse) an attempt; the answer goes to the dispatching router on its own subject, since
        the message's reply subject is the client's (the only one this hoster may publish frames to)."""
        message = current_message(broker)
        hoster_id = subjects.hoster_of(message.raw_message.subject)
        await adapter.accept(hoster_id, dispatch, message.raw_message.reply)

    async def cancel_attempt(event: RequestCancelled) -> None:
        adapter.cancel(event.request_id)

    for hoster_id in adapter.hosters:
        broker.subscriber(
            subjects.attempt_start(hoster_id), queue=subjects.QUEUE_HOSTER_ADAPTER, max_workers=64, no_reply=True
        )(start_attempt)
        # Every adapter of the hoster hears the cancel: only the one running the attempt acts on it.
        broker.subscriber(subjects.attempt_cancel(hoster_id), no_reply=True)(cancel_attempt)
