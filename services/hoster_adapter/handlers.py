"""The adapter's subscribers: take attempts for the hosters it fronts, stop cancelled ones."""

from __future__ import annotations

from faststream.nats import NatsBroker

from libs.contracts import subjects
from libs.contracts.routing import AttemptAccepted, AttemptDispatch, RequestCancelled
from services.hoster_adapter.upstream import HosterAdapter


def register_handlers(broker: NatsBroker, adapter: HosterAdapter) -> None:
    """Subscribe one queue-group subject per fronted hoster, and the broadcast cancel subject."""

    async def start_attempt(dispatch: AttemptDispatch) -> AttemptAccepted:
        """Accept (or refuse) an attempt; the reply goes back to the router at once."""
        return adapter.accept(dispatch)

    for hoster_id in adapter.hosters:
        broker.subscriber(subjects.attempt_start(hoster_id), queue=subjects.QUEUE_HOSTER_ADAPTER, max_workers=64)(
            start_attempt
        )

    # Every adapter hears every cancel: only the one running the attempt acts on it.
    @broker.subscriber(subjects.REQUEST_CANCELLED)
    async def cancel_request(event: RequestCancelled) -> None:
        adapter.cancel(event.request_id)
