"""The adapter's subscribers: take attempts for the hosters it fronts, stop cancelled ones."""

from __future__ import annotations

from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.contracts.routing import AttemptDispatch, RequestCancelled
from libs.platform.broker import HotSubscriptions
from services.hoster_adapter.upstream import HosterAdapter


def register_handlers(broker: NatsBroker, hot: HotSubscriptions, adapter: HosterAdapter) -> None:
    """Subscribe one queue-group subject per fronted hoster for attempts (on ``hot``: every request crosses
    it), and one for their cancels."""

    async def start_attempt(dispatch: AttemptDispatch, msg: Msg) -> None:
        """Accept (or refuse) an attempt; the answer goes to the dispatching router on its own subject, since
        the message's reply subject is the client's (the only one this hoster may publish frames to)."""
        await adapter.accept(subjects.hoster_of(msg.subject), dispatch, msg.reply)

    async def cancel_attempt(event: RequestCancelled) -> None:
        adapter.cancel(event.request_id)

    for hoster_id in adapter.hosters:
        hot.add(subjects.attempt_start(hoster_id), AttemptDispatch, start_attempt, queue=subjects.QUEUE_HOSTER_ADAPTER,
                max_concurrency=64)  # fmt: skip
        # Every adapter of the hoster hears the cancel: only the one running the attempt acts on it.
        broker.subscriber(subjects.attempt_cancel(hoster_id), no_reply=True)(cancel_attempt)
