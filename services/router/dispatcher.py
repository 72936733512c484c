"""The request lifecycle as the router runs it: admit, dispatch, learn outcomes, settle, fail dead attempts."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import TypeAdapter

from libs.contracts import frames, subjects
from libs.contracts.billing import Admission, BilledAttempt, Refused, RequestFinished, ReserveCredits, Reserved
from libs.contracts.common import ErrorReport
from libs.contracts.hosters import HosterHeartbeat
from libs.contracts.pricing import cost_of, estimate_prompt_tokens, requested_max_tokens
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptDispatch,
    AttemptFinished,
    AttemptOutcome,
    RouteAccepted,
    RouteRejected,
    RouteRequest,
)
from libs.platform.broker import publish_durably
from services.router.service import Candidate, HosterRegistry, NoEligibleHoster, order_candidates
from services.router.settings import RouterSettings

_ADMISSION: TypeAdapter[Reserved | Refused] = TypeAdapter(Admission)
# Hosters a request may still fail over to; its reservation covers the dearest of them.
MAX_ATTEMPTS = 3


@dataclass(slots=True)
class InFlight:
    """A request this router dispatched and has not yet heard the end of."""

    route: RouteRequest
    model: str
    hoster_id: str
    adapter_id: str
    attempt: int
    started: float
    cancelled: bool = False


def billable(event: AttemptFinished) -> bool:
    """Whether the client pays for an attempt: it did for what reached it (a failure before any chunk, or a
    failed non-streaming attempt, costs nothing)."""
    return event.outcome != "failed" or (event.stream and event.chunks_sent > 0)


class Dispatcher:
    """Owns the registry and the in-flight requests of one router instance."""

    def __init__(self, settings: RouterSettings, router_id: str, broker: NatsBroker, logger: logging.Logger):
        self.router_id = router_id
        self.registry = HosterRegistry(ttl_s=settings.hoster_ttl_s)
        self._settings = settings
        self._broker = broker
        self._log = logger
        self._in_flight: dict[str, InFlight] = {}
        self._publishing: set[asyncio.Task[bool]] = set()

    def observe(self, heartbeat: HosterHeartbeat) -> list[str]:
        """Feed one heartbeat to the registry; return models the network never served before."""
        return self.registry.observe(heartbeat, time.monotonic(), int(time.time()))

    async def route(self, request: RouteRequest) -> RouteAccepted | RouteRejected:
        """Pick hosters, have billing admit the request, then hand the first hoster that takes it the attempt."""
        s = self._settings
        try:
            model, candidates = order_candidates(
                self.registry, request.model, request.routing, time.monotonic(), s.retry_after_s
            )
        except NoEligibleHoster as exc:
            return RouteRejected(error=exc.report)
        headers: dict[str, str] = {}
        if request.caller is not None:
            admission = await self._admit(request, candidates)
            if isinstance(admission, ErrorReport):
                return RouteRejected(error=admission)
            headers = admission.rate.headers()
            if isinstance(admission, Refused):
                return RouteRejected(error=admission.error, headers=headers)
        attempt = 1
        for candidate in candidates:
            accepted = await self._dispatch(self._attempt(request, model, candidate, attempt))
            if accepted is None:
                continue
            self._in_flight[request.request_id] = InFlight(
                request, model, candidate.hoster.hoster_id, accepted.adapter_id, attempt, time.monotonic()
            )
            return RouteAccepted(hoster_id=candidate.hoster.hoster_id, model=model, attempt=attempt, headers=headers)
        self._finish(request, model, "failed", [])
        return RouteRejected(
            error=ErrorReport(
                http_status=503,
                type="server_error",
                code="no_hoster_available",
                message="Every eligible hoster is busy or unreachable right now.",
                retry_after=s.retry_after_s,
            ),
            headers=headers,
        )

    def _attempt(self, request: RouteRequest, model: str, candidate: Candidate, attempt: int) -> AttemptDispatch:
        return AttemptDispatch(
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
            fee_bps=self._settings.platform_fee_bps,
            body=request.body,
        )

    async def _admit(self, request: RouteRequest, candidates: list[Candidate]) -> Reserved | Refused | ErrorReport:
        """Ask billing to hold the request's maximum cost: its prompt estimate plus its completion budget at
        the dearest hoster it may fail over to."""
        assert request.caller is not None
        s = self._settings
        prompt = estimate_prompt_tokens(request.body)
        completion = requested_max_tokens(request.body, s.default_max_tokens)
        amount = max(
            cost_of(prompt, completion, c.offer.input_price, c.offer.output_price, s.platform_fee_bps).client
            for c in candidates[:MAX_ATTEMPTS]
        )
        command = ReserveCredits(
            request_id=request.request_id,
            caller=request.caller,
            amount=amount,
            tokens=prompt + completion,
            fee_bps=s.platform_fee_bps,
        )
        try:
            reply = await self._broker.request(command, subjects.RESERVE_CREDITS, timeout=s.billing_timeout_s)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return ErrorReport(
                http_status=503,
                type="server_error",
                code="billing_unavailable",
                message="Billing is unavailable, so no request can be admitted right now.",
                retry_after=s.retry_after_s,
            )
        return _ADMISSION.validate_json(reply.body)

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
        """An attempt ended: settle the request, and report a failure to the client (failover comes with the
        marketplace)."""
        flight = self._in_flight.get(event.request_id)
        if flight is None or flight.attempt != event.attempt:
            return
        del self._in_flight[event.request_id]
        attempts = []
        if billable(event):
            attempts.append(
                BilledAttempt(
                    attempt=event.attempt,
                    hoster_id=event.hoster_id,
                    usage=event.usage,
                    input_price=event.input_price,
                    output_price=event.output_price,
                )
            )
        self._finish(flight.route, flight.model, event.outcome, attempts)
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
        """The client left; its adapter stops and reports what it made, which is then settled."""
        flight = self._in_flight.get(request_id)
        if flight is not None:
            flight.cancelled = True

    def _finish(self, route: RouteRequest, model: str, outcome: AttemptOutcome, attempts: list[BilledAttempt]) -> None:
        """Tell billing (durably, in the background) that the request is over."""
        if route.caller is None:
            return
        event = RequestFinished(
            request_id=route.request_id,
            account_id=route.caller.account_id,
            model=model,
            outcome=outcome,
            fee_bps=self._settings.platform_fee_bps,
            attempts=attempts,
            finished_at=time.time(),
        )
        js = self._broker.connection.jetstream()
        task = asyncio.create_task(
            publish_durably(
                js,
                subjects.REQUEST_FINISHED,
                event.model_dump_json().encode(),
                f"{route.request_id}:finished",
                self._log,
            )
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def drain(self) -> None:
        """Wait for settlement events still being published."""
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=10.0)

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
                        "adapter vanished mid-request", extra={"request_id": request_id, "adapter": flight.adapter_id}
                    )
                    # What the vanished adapter produced is unknown: the client pays nothing.
                    self._finish(flight.route, flight.model, "failed", [])
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
