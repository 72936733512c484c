"""The request lifecycle as the router runs it: dispatch attempts, learn their outcomes, fail dead ones."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from libs.contracts import frames, subjects
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptDispatch,
    AttemptFinished,
    ErrorReport,
    RouteAccepted,
    RouteRejected,
    RouteRequest,
)
from services.router.service import HosterRegistry, NoEligibleHoster, order_candidates
from services.router.settings import RouterSettings


@dataclass(slots=True)
class InFlight:
    """A request this router dispatched and has not yet heard the end of."""

    route: RouteRequest
    hoster_id: str
    adapter_id: str
    attempt: int
    started: float


class Dispatcher:
    """Owns the registry and the in-flight requests of one router instance."""

    def __init__(self, settings: RouterSettings, router_id: str, broker: NatsBroker, logger: logging.Logger):
        self.router_id = router_id
        self.registry = HosterRegistry(ttl_s=settings.hoster_ttl_s)
        self._settings = settings
        self._broker = broker
        self._log = logger
        self._in_flight: dict[str, InFlight] = {}

    def observe(self, heartbeat: HosterHeartbeat) -> list[str]:
        """Feed one heartbeat to the registry; return models the network never served before."""
        return self.registry.observe(heartbeat, time.monotonic(), int(time.time()))

    async def route(self, request: RouteRequest) -> RouteAccepted | RouteRejected:
        """Pick a hoster and hand it the first attempt; try the next hoster while adapters refuse."""
        now = time.monotonic()
        try:
            model, candidates = order_candidates(
                self.registry, request.model, request.routing, now, self._settings.retry_after_s
            )
        except NoEligibleHoster as exc:
            return RouteRejected(error=exc.report)
        attempt = 1
        for candidate in candidates:
            dispatch = AttemptDispatch(
                request_id=request.request_id,
                attempt=attempt,
                router_id=self.router_id,
                reply_subject=request.reply_subject,
                hoster_id=candidate.hoster.hoster_id,
                model=model,
                upstream_model=candidate.offer.upstream_model,
                stream=request.stream,
                include_usage=request.include_usage,
                created=request.created,
                input_price=candidate.offer.input_price,
                output_price=candidate.offer.output_price,
                body=request.body,
            )
            accepted = await self._dispatch(dispatch)
            if accepted is None:
                continue
            self._in_flight[request.request_id] = InFlight(
                request, candidate.hoster.hoster_id, accepted.adapter_id, attempt, time.monotonic()
            )
            return RouteAccepted(hoster_id=candidate.hoster.hoster_id, model=model, attempt=attempt)
        return RouteRejected(
            error=ErrorReport(
                http_status=503,
                type="server_error",
                code="no_hoster_available",
                message="Every eligible hoster is busy or unreachable right now.",
                retry_after=self._settings.retry_after_s,
            )
        )

    async def _dispatch(self, dispatch: AttemptDispatch) -> AttemptAccepted | None:
        try:
            reply = await self._broker.request(
                dispatch,
                subjects.attempt_start(dispatch.hoster_id),
                timeout=self._settings.dispatch_timeout_s,
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            self._log.warning("adapter did not take attempt", extra={"hoster_id": dispatch.hoster_id})
            return None
        accepted = AttemptAccepted.model_validate_json(reply.body)
        return accepted if accepted.accepted else None

    async def attempt_finished(self, event: AttemptFinished) -> None:
        """An attempt ended: a failure is reported to the client (failover comes with the marketplace)."""
        flight = self._in_flight.get(event.request_id)
        if flight is None or flight.attempt != event.attempt:
            return
        del self._in_flight[event.request_id]
        if event.outcome == "failed":
            await self._fail(
                flight,
                ErrorReport(
                    http_status=500,
                    type="server_error",
                    code="upstream_error",
                    message="The hoster failed to complete this request.",
                ),
            )

    def cancelled(self, request_id: str) -> None:
        """The client left; nothing more to do for this request."""
        self._in_flight.pop(request_id, None)

    async def watch(self, interval_s: float = 0.5) -> None:
        """Fail requests whose adapter stopped heartbeating, and forget expired hosters."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            self.registry.forget_expired(now)
            for request_id, flight in list(self._in_flight.items()):
                if not self.registry.adapter_alive(flight.adapter_id, now):
                    self._in_flight.pop(request_id, None)
                    self._log.warning(
                        "adapter vanished mid-request",
                        extra={"request_id": request_id, "adapter": flight.adapter_id},
                    )
                    await self._fail(
                        flight,
                        ErrorReport(
                            http_status=503,
                            type="server_error",
                            code="hoster_unavailable",
                            message="The hoster serving this request went away.",
                            retry_after=self._settings.retry_after_s,
                        ),
                    )

    async def _fail(self, flight: InFlight, report: ErrorReport) -> None:
        frame = frames.encode(frames.ERROR, flight.attempt, -1, report.model_dump_json().encode())
        await self._broker.connection.publish(flight.route.reply_subject, frame)
