"""The router's subscribers; each one hands straight to the dispatcher."""

from __future__ import annotations

import logging
import time

import orjson
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from libs.contracts import subjects
from libs.contracts.billing import LeaseRecalled, RecallLease
from libs.contracts.hosters import HosterHeartbeat, LiveHosters, ModelsListing
from libs.contracts.management import HosterDetailQuery, HosterDetailReply
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptFinished,
    AttemptsObserved,
    RequestCancelled,
    RequestDelivered,
    RouteAccepted,
    RouteRejected,
    RouteRequest,
)
from libs.contracts.verification import SpotCheckJudged
from libs.platform.broker import HotSubscriptions
from services.router.dispatcher import Dispatcher
from services.router.reports import hoster_detail
from services.router.store import KvStore


def register_handlers(
    broker: NatsBroker,
    hot: HotSubscriptions,
    routes: HotSubscriptions,
    dispatcher: Dispatcher,
    models_seen: KvStore,
    workers: int,
    logger: logging.Logger,
) -> None:
    """Wire the router's subjects to ``dispatcher``: route requests on ``routes`` (subscribed once the router
    has heard the network), what else every request crosses and the heartbeats on ``hot``, the rest as
    faststream subscribers."""

    async def route_request(request: RouteRequest, _: Msg) -> RouteAccepted | RouteRejected:
        """Route one request; the reply tells the ingress who took it or why nobody could."""
        return await dispatcher.route(request)

    routes.add(subjects.ROUTE_REQUEST, RouteRequest, route_request, queue=subjects.QUEUE_ROUTER, reply=True,
               max_concurrency=workers)  # fmt: skip

    @broker.subscriber(subjects.LIST_MODELS, queue=subjects.QUEUE_ROUTER)
    async def list_models() -> ModelsListing:
        """The models live on the network now."""
        verified = await dispatcher.registered_models()
        models = dispatcher.registry.live_models(time.monotonic())
        now, wall, v = time.monotonic(), time.time(), dispatcher.verifications
        live = dispatcher.registry.live(now)
        listed = []
        for m in models:
            hosters = {c.hoster.hoster_id for c in live if c.offer.model == m.id}
            update = {
                "usage_verified": m.id in verified,
                "verified_hosters": sum(v.of(h, m.id, wall) == "verified" for h in hosters),
                "has_reference": v.has_reference(m.id),
            }
            listed.append(m.model_copy(update=update))
        return ModelsListing(models=listed)

    @broker.subscriber(subjects.SHOW_HOSTER, queue=subjects.QUEUE_ROUTER)
    async def show_hoster(query: HosterDetailQuery) -> HosterDetailReply:
        """One hoster: live status, models and prices, speed, trust with each of its terms."""
        detail = hoster_detail(query.hoster_id, dispatcher.registry, dispatcher.stats, time.monotonic(), time.time(),
                               dispatcher.verifications)  # fmt: skip
        return HosterDetailReply(hoster=detail)

    @broker.subscriber(subjects.LIST_HOSTERS, queue=subjects.QUEUE_ROUTER)
    async def list_hosters() -> LiveHosters:
        """Every hoster the router knows, live or not, with its trust."""
        return dispatcher.hosters_report()

    # Every router replica hears every heartbeat and every attempt's outcome, so replicas see the same
    # network and decide alike.
    async def hoster_heartbeat(heartbeat: HosterHeartbeat, msg: Msg) -> None:
        # The subject is the only identity to believe: the server lets a hoster publish under its own id alone.
        hoster_id = subjects.hoster_of(msg.subject)
        if [status.hoster_id for status in heartbeat.hosters] != [hoster_id]:
            return
        for model in dispatcher.observe(heartbeat):
            first_seen = dispatcher.registry.models_seen[model]
            record = {"model": model, "first_seen": first_seen, "hoster_id": hoster_id}
            models_seen.put(model, orjson.dumps(record))
        for hoster, model in dispatcher.registry.take_unremembered():
            logger.warning(
                "model not remembered: the hoster or the network introduced as many models as it may",
                extra={"hoster_id": hoster, "model": model},
            )

    # One at a time, in order: a hoster's heartbeats must not overtake each other.
    hot.add(subjects.HOSTER_HEARTBEAT_ALL, HosterHeartbeat, hoster_heartbeat, max_concurrency=1)

    # The outcome reports of this router's own dispatches (core messages, addressed to it): claims it checks
    # against its records of the dispatches.
    async def attempt_finished(event: AttemptFinished, msg: Msg) -> None:
        if event.hoster_id != subjects.hoster_of(msg.subject) or event.router_id != dispatcher.router_id:
            return  # a hoster reporting on another's attempt, or on another router's
        await dispatcher.attempt_finished(event)

    hot.add(subjects.attempts_finished_for_router(dispatcher.router_id), AttemptFinished, attempt_finished,
            max_concurrency=workers)  # fmt: skip

    # Every router's judgement of the attempts it dispatched: the stats of every replica (hosters cannot
    # publish here).
    async def attempts_observed(batch: AttemptsObserved, _: Msg) -> None:
        dispatcher.observed_elsewhere(batch)

    hot.add(subjects.ATTEMPTS_OBSERVED, AttemptsObserved, attempts_observed, max_concurrency=1)

    # Every judged spot check, whichever router ran it (hosters cannot publish here): every replica's verdicts.
    async def spot_check_judged(judged: SpotCheckJudged, _: Msg) -> None:
        dispatcher.observe_spot_check(judged)

    hot.add(subjects.SPOT_CHECK_JUDGED, SpotCheckJudged, spot_check_judged, max_concurrency=1)

    async def attempt_accepted(answer: AttemptAccepted, msg: Msg) -> None:
        dispatcher.offer_answered(subjects.hoster_of(msg.subject), answer)

    hot.add(subjects.attempts_accepted_by_router(dispatcher.router_id), AttemptAccepted, attempt_accepted,
            max_concurrency=workers)  # fmt: skip

    async def recall_lease(recall: RecallLease, _: Msg) -> LeaseRecalled:
        return dispatcher.recall_lease(recall)

    hot.add(subjects.lease_recall(dispatcher.router_id), RecallLease, recall_lease, reply=True)

    async def request_delivered(note: RequestDelivered, _: Msg) -> None:
        dispatcher.delivered(note)

    hot.add(subjects.request_delivered(dispatcher.router_id), RequestDelivered, request_delivered,
            max_concurrency=workers)  # fmt: skip

    @broker.subscriber(subjects.REQUEST_CANCELLED)
    async def request_cancelled(event: RequestCancelled) -> None:
        await dispatcher.cancelled(event)
