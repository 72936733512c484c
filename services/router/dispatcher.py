"""The request lifecycle as the router runs it: admit, dispatch, learn outcomes, fail over, settle."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import TypeAdapter

from libs.contracts import errors, frames, subjects
from libs.contracts.billing import (
    Admission,
    BilledAttempt,
    LeaseAnswer,
    LeaseCredits,
    LeasedAdmission,
    LeasedAdmissions,
    LeaseGranted,
    LeaseRecalled,
    LeaseReturned,
    RecallLease,
    Refused,
    RequestFinished,
    ReservationsAlive,
    ReserveCredits,
    Reserved,
)
from libs.contracts.common import ErrorReport, Usage
from libs.contracts.hosters import HosterHeartbeat, HosterRegistrations, LiveHoster, LiveHosters
from libs.contracts.pricing import UsageBounds, rate_limited_tokens, requested_max_tokens
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptDispatch,
    AttemptFinished,
    AttemptOutcome,
    RequestCancelled,
    RequestDelivered,
    RouteAccepted,
    RouteRejected,
    RouteRequest,
)
from libs.platform.broker import publish_durably
from libs.platform.metrics import ATTEMPTS, HOSTER_FAILURES, IN_FLIGHT
from libs.platform.telemetry import REQUEST_ID, inject_headers
from services.router.leases import Lease, LeaseBook
from services.router.service import (
    MAX_ATTEMPTS,
    Candidate,
    FirstByteBudget,
    HosterRegistry,
    InFlight,
    NoEligibleHoster,
    RequestProfile,
    bill_attempt,
    billable,
    can_fail_over,
    first_byte_deadline_ms,
    hold_to_text,
    max_cost,
    order_candidates,
    prefer_healthy,
)
from services.router.settings import RouterSettings
from services.router.stats import NetworkStats

_ADMISSION: TypeAdapter[Reserved | Refused] = TypeAdapter(Admission)
_LEASE_ANSWER: TypeAdapter[LeaseAnswer] = TypeAdapter(LeaseAnswer)
# How many leases one request may wait for before it is admitted by billing instead.
LEASE_ASKS = 3
# How long a route_timeout is remembered for a request this router may still be routing.
ABANDONED_TTL_S = 60.0


class Dispatcher:
    """Owns the registry, the observed stats and the in-flight requests of one router instance."""

    def __init__(self, settings: RouterSettings, router_id: str, broker: NatsBroker, logger: logging.Logger):
        self.router_id = router_id
        self.registry = HosterRegistry(ttl_s=settings.hoster_ttl_s)
        self.stats = NetworkStats()
        # Set at the first heartbeat heard (a router that just started waits for it before routing).
        self.heard_hoster = asyncio.Event()
        self._settings = settings
        self._broker = broker
        self._log = logger
        self._in_flight: dict[str, InFlight] = {}
        self._probes: set[str] = set()
        # Dispatches waiting for their hoster's answer: (request, attempt) -> (hoster, answer).
        self._offers: dict[tuple[str, int], tuple[str, asyncio.Future[AttemptAccepted]]] = {}
        # Outcomes heard while their dispatch still waited for its answer (the accept and the outcome arrive on
        # two subscriptions, so a fast failure can be handled first); replayed once the attempt is in flight.
        self._early: dict[tuple[str, int], AttemptFinished] = {}
        # Probe requests waiting for their attempt's report (see ``services.router.probes``).
        self._probe_reports: dict[str, asyncio.Future[AttemptFinished]] = {}
        # Requests over, waiting for the ingress's word on what reached the client (``RequestDelivered``), and
        # words that came before their request was over.
        self._undelivered: dict[str, tuple[InFlight, str, AttemptOutcome]] = {}
        self._deliveries: dict[str, RequestDelivered] = {}
        # Requests the ingress gave up on while this router was still routing them (``route_timeout``).
        self._abandoned: set[str] = set()
        self._publishing: set[asyncio.Task[bool]] = set()
        # Credit leases held on accounts, and the lease requests to billing under way (one per account).
        self._leases = LeaseBook()
        self._granting: dict[str, asyncio.Future[None]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._first_byte = FirstByteBudget(
            settings.first_byte_floor_ms,
            settings.first_byte_ceiling_ms,
            settings.first_byte_multiple,
            settings.first_byte_ms_per_prompt_token,
        )
        IN_FLIGHT.labels("router").set_function(lambda: len(self._in_flight))

    def observe(self, heartbeat: HosterHeartbeat) -> list[str]:
        """Feed one heartbeat to the registry; return models the network never served before."""
        self.heard_hoster.set()
        return self.registry.observe(heartbeat, time.monotonic(), int(time.time()))

    async def refresh_registrations(self) -> None:
        """Learn from billing which hosters registered (name, region, cloud) and which were revoked."""
        try:
            reply = await self._broker.request(
                None, subjects.LIST_REGISTRATIONS, timeout=self._settings.billing_timeout_s
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return  # billing away: keep what we knew
        self.registry.register(HosterRegistrations.model_validate_json(reply.body).hosters)

    async def keep_registrations(self, interval_s: float) -> None:
        """``refresh_registrations`` every ``interval_s``, for ever; an error is logged, never fatal."""
        while True:
            try:
                await self.refresh_registrations()
            except Exception:
                self._log.exception("hoster registrations not refreshed")
            await asyncio.sleep(interval_s)

    def hosters_report(self) -> LiveHosters:
        """Every hoster this router knows (live now, or with stats), for the operator."""
        now, wall = time.monotonic(), time.time()
        live = {status.hoster_id: status for status, _ in self.registry.statuses(now)}
        known = set(live) | set(self.stats.hosters) | set(self.registry.registrations)
        report = []
        for hoster_id in sorted(known):
            status = live.get(hoster_id)
            registered = self.registry.registrations.get(hoster_id)
            stats = self.stats.of(hoster_id, wall)
            report.append(
                LiveHoster(
                    hoster_id=hoster_id,
                    name=status.name if status else (registered.name if registered else ""),
                    live=status is not None,
                    cloud=status.cloud if status else bool(registered and registered.cloud),
                    models=[o.model for o in status.models] if status else [],
                    capacity=status.capacity if status else None,
                    in_flight=status.in_flight if status else None,
                    trust=round(stats.trust(wall), 4),
                    cooling=stats.cooling(wall),
                    attempts=stats.lifetime,
                    usage_discrepancies=stats.discrepancies,
                    region=status.region if status else (registered.region if registered else None),
                    ttft_median_ms=stats.ttft_median_ms,
                    tokens_per_s=stats.tokens_per_s,
                )
            )
        return LiveHosters(hosters=report)

    def observe_attempt(self, event: AttemptFinished) -> None:
        """Fold any router's attempt outcome into the stats, so every replica sees the same network."""
        ATTEMPTS.labels(event.outcome).inc()
        if event.outcome == "failed" and not event.client_error:
            HOSTER_FAILURES.labels(event.hoster_id).inc()
        self.stats.observe(
            event.hoster_id,
            time.time(),
            model=event.model,
            outcome=event.outcome,
            chunks_sent=event.chunks_sent,
            ttft_ms=event.ttft_ms,
            completion_tokens=event.usage.completion_tokens,
            duration_ms=event.duration_ms,
            client_error=event.client_error,
        )

    async def route(self, request: RouteRequest) -> RouteAccepted | RouteRejected:
        """Order the eligible hosters, have billing admit the request, then start its first attempt."""
        REQUEST_ID.set(request.request_id)
        s = self._settings
        profile = RequestProfile.of(request.body, s.default_max_tokens, request.endpoint)
        bounds = UsageBounds.of(request.body, len(orjson.dumps(request.body)), s.default_max_tokens, request.endpoint)
        try:
            candidates = order_candidates(
                self.registry,
                self.stats,
                request.model,
                request.routing,
                profile,
                time.monotonic(),
                time.time(),
                s.retry_after_s,
                self._probes,
                s.platform_fee_bps,
            )
        except NoEligibleHoster as exc:
            return RouteRejected(error=exc.report)
        headers: dict[str, str] = {}
        if request.caller is not None:
            amount = max_cost(candidates[:MAX_ATTEMPTS], bounds, s.platform_fee_bps)
            if not await self._admit_leased(request, amount):
                admission = await self._admit(request, profile, amount)
                if isinstance(admission, ErrorReport):
                    return RouteRejected(error=admission)
                headers = admission.rate.headers()
                if isinstance(admission, Refused):
                    return RouteRejected(error=admission.error, headers=headers)
            # Only a hoster the reservation covers may serve, however far the failover goes.
            candidates = [c for c in candidates if max_cost([c], bounds, s.platform_fee_bps) <= amount]
        if request.request_id in self._abandoned:
            self._finish(request, request.model, "cancelled", [])  # nobody waits for it: release the hold
            return RouteRejected(error=errors.route_timeout(self._settings.retry_after_s))
        try:
            flight = await self._start(request, candidates, 1, profile.prompt_tokens, bounds)
        except BaseException:
            # Its lease must not wait on it: billing records its reservation from the lease's batch and
            # settles or sweeps it as any other.
            self._leases.finished(request.request_id)
            raise
        if flight is not None and request.request_id in self._abandoned:
            await self._abandon(flight)
        if flight is None:
            self._finish(request, request.model, "failed", [])
            return RouteRejected(
                error=errors.hosters_busy(s.retry_after_s),
                headers=headers,
            )
        return RouteAccepted(
            hoster_id=flight.candidate.hoster.hoster_id,
            model=flight.candidate.offer.model,
            attempt=1,
            headers=headers,
            first_byte_deadline_ms=flight.first_byte_deadline_ms,
            prompt_bound=flight.bounds.prompt,
            completion_bound=flight.bounds.completion,
            input_price=flight.candidate.offer.input_price,
            output_price=flight.candidate.offer.output_price,
            fee_bps=s.platform_fee_bps,
            router_id=self.router_id,
        )

    async def _start(
        self,
        request: RouteRequest,
        queue: list[Candidate],
        attempt: int,
        prompt_tokens: int,
        bounds: UsageBounds,
        before: InFlight | None = None,
    ) -> InFlight | None:
        """Hand attempt ``attempt`` to the first candidate in ``queue`` whose adapter takes it. A failover
        carries over what the attempts ``before`` it billed before anything can report on the new one (an
        outcome heard before its acceptance is replayed at once)."""
        if attempt > 1:
            prefer_healthy(queue, self.stats, time.time())
        while queue:
            candidate = queue.pop(0)
            dispatch = self._attempt(request, candidate, attempt, prompt_tokens)
            if attempt > 1:
                # Before the attempt starts, so the ingress learns who serves (and the attempt's first-byte
                # deadline) before the answer arrives.
                body = orjson.dumps(
                    {
                        "hoster_id": candidate.hoster.hoster_id,
                        "model": candidate.offer.model,
                        "first_byte_deadline_ms": dispatch.first_byte_deadline_ms,
                        "input_price": candidate.offer.input_price,
                        "output_price": candidate.offer.output_price,
                    }
                )
                await self._broker.connection.publish(
                    subjects.control_subject(request.reply_subject), frames.encode(frames.ATTEMPT, attempt, -1, body)
                )
            accepted = await self._dispatch(dispatch)
            if accepted is None:
                continue
            hoster_id = candidate.hoster.hoster_id
            if self.stats.of(hoster_id, time.time()).probing(time.time()):
                self._probes.add(hoster_id)
            flight = InFlight(
                request,
                queue,
                candidate,
                accepted.adapter_id,
                attempt,
                prompt_tokens,
                dispatch.first_byte_deadline_ms,
                time.monotonic(),
                bounds,
            )
            if before is not None:
                flight.billed, flight.reported, flight.cancelled = before.billed, before.reported, before.cancelled
            self._in_flight[request.request_id] = flight
            early = self._early.pop((request.request_id, attempt), None)
            if early is not None:
                await self.attempt_finished(early)
            return flight
        return None

    def _attempt(
        self, request: RouteRequest, candidate: Candidate, attempt: int, prompt_tokens: int
    ) -> AttemptDispatch:
        hoster = self.stats.of(candidate.hoster.hoster_id, time.time())
        speed = hoster.speed.get(candidate.offer.model)
        deadline_ms = first_byte_deadline_ms(
            self._first_byte,
            speed.ttft_p95_ms if speed is not None and speed.expected_ttft_ms is not None else None,
            candidate.hoster.advertised_ttft_ms,
            prompt_tokens,
            request.routing.max_latency_ms,
            self.stats.measured_ttft_p95s_ms(candidate.offer.model),
        )
        return AttemptDispatch(
            request_id=request.request_id,
            attempt=attempt,
            router_id=self.router_id,
            reply_subject=request.reply_subject,
            hoster_id=candidate.hoster.hoster_id,
            model=candidate.offer.model,
            upstream_model=candidate.offer.upstream_model,
            stream=request.stream,
            include_usage=request.include_usage,
            created=request.created,
            input_price=candidate.offer.input_price,
            output_price=candidate.offer.output_price,
            fee_bps=self._settings.platform_fee_bps,
            body=request.body,
            max_tokens=requested_max_tokens(request.body, self._settings.default_max_tokens, request.endpoint),
            first_byte_deadline_ms=deadline_ms,
            endpoint=request.endpoint,
        )

    async def _admit_leased(self, request: RouteRequest, amount: int) -> bool:
        """Admit the request against a credit lease on its account (asking billing for one when none covers
        it); ``False`` when it must go to billing instead: its key has rate limits (counted by billing, exactly,
        across routers), leases are off, or billing holds no lease for it (too little credit left to share)."""
        caller = request.caller
        assert caller is not None
        s = self._settings
        if not s.lease_requests or caller.rpm is not None or caller.tpm is not None:
            return False
        admission = LeasedAdmission(
            request_id=request.request_id,
            key_id=caller.key_id,
            amount=amount,
            fee_bps=s.platform_fee_bps,
            endpoint=request.endpoint,
        )
        lease = self._leases.admit(caller.account_id, admission, time.monotonic(), time.time())
        # A burst of the account's requests waits for one lease; those it no longer covers ask for the next.
        for _ in range(LEASE_ASKS):
            if lease is not None or not self._leases.may_ask(caller.account_id, time.monotonic()):
                break
            await self._lease(caller.account_id, amount)
            lease = self._leases.admit(caller.account_id, admission, time.monotonic(), time.time())
        if lease is None:
            return False
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(s.lease_flush_s, self._flush_admissions)
        return True

    async def _lease(self, account_id: str, amount: int) -> None:
        """Ask billing for a lease on the account worth ``lease_requests`` requests like this one; requests of
        the account arriving meanwhile wait for the same answer."""
        pending = self._granting.get(account_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._granting[account_id] = answered
        s = self._settings
        lease_id = str(uuid.uuid4())
        try:
            command = LeaseCredits(
                lease_id=lease_id,
                account_id=account_id,
                router_id=self.router_id,
                amount=amount * s.lease_requests,
                minimum=amount,
            )
            reply = await self._broker.connection.request(
                subjects.LEASE_CREDITS, command.model_dump_json().encode(), timeout=s.billing_timeout_s
            )
            answer = _LEASE_ANSWER.validate_json(reply.data)
            now = time.monotonic()
            if isinstance(answer, LeaseGranted) and answer.lease_id == lease_id:
                lease = Lease(lease_id, account_id, answer.amount, last_used=now, until=answer.until)
                self._leases.add(lease, now)
            else:
                self._leases.refused(account_id, now + s.lease_retry_s)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            # Billing may have granted it and its answer be lost: give it back (admitted nothing), durably; a
            # grant arriving after that is refused.
            self._leases.refused(account_id, time.monotonic() + s.lease_retry_s)
            self._give_back(Lease(lease_id, account_id, 0))
        finally:
            del self._granting[account_id]
            answered.set_result(None)

    def _flush_admissions(self) -> None:
        """Tell billing, durably and off the requests' path, which requests the leases admitted lately."""
        self._flush = None
        for lease in self._leases.with_pending():
            self._publish_admissions(lease)

    def _publish_admissions(self, lease: Lease) -> asyncio.Task[bool] | None:
        if not lease.pending:
            return None
        batch, number = self._leases.take_pending(lease)
        event = LeasedAdmissions(lease_id=lease.lease_id, admissions=batch)
        return self._publish(subjects.LEASE_ADMITTED, event.model_dump_json().encode(), f"{lease.lease_id}:{number}")

    def _give_back(self, lease: Lease) -> None:
        """Tell billing (durably) the admissions not told yet, then that the lease admits nothing more. If the
        admissions could not be told, the lease is not given back: billing's sweep recalls it later (this
        router answers with what it admitted), and the requests' settlements record them meanwhile."""
        admissions = self._publish_admissions(lease)
        returned = LeaseReturned(lease_id=lease.lease_id, account_id=lease.account_id, admitted=lease.admitted)

        async def after_admissions() -> bool:
            if admissions is not None and not await admissions:
                return False
            return await publish_durably(
                self._broker.connection.jetstream(),
                subjects.LEASE_RETURNED,
                returned.model_dump_json().encode(),
                f"{lease.lease_id}:returned",
                self._log,
            )

        self._track(asyncio.create_task(after_admissions()))

    def recall_lease(self, recall: RecallLease) -> LeaseRecalled:
        """Billing takes a lease back (the account's credit ran short, or the lease looks stale): it admits
        nothing more here, and is given back as any other (durably: should this answer be lost, billing still
        hears it). A lease recalled lately is answered alike; one this router never held with ``None``."""
        lease, admitted = self._leases.recall(recall.lease_id, time.monotonic(), self._settings.lease_retry_s)
        if lease is not None:
            self._give_back(lease)
        return LeaseRecalled(lease_id=recall.lease_id, admitted=admitted)

    def _give_back_due(self, now: float) -> None:
        """Give back the leases done with (``LeaseBook.due``)."""
        for lease in self._leases.due(now, self._settings.lease_idle_s, self._settings.in_flight_max_s, time.time()):
            self._give_back(lease)

    def _publish(self, subject: str, data: bytes, msg_id: str) -> asyncio.Task[bool]:
        task = asyncio.create_task(
            publish_durably(self._broker.connection.jetstream(), subject, data, msg_id, self._log)
        )
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[bool]) -> None:
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _admit(
        self, request: RouteRequest, profile: RequestProfile, amount: int
    ) -> Reserved | Refused | ErrorReport:
        """Ask billing to hold ``amount``, the request's maximum cost (``max_cost``)."""
        assert request.caller is not None
        s = self._settings
        command = ReserveCredits(
            request_id=request.request_id,
            caller=request.caller,
            amount=amount,
            tokens=rate_limited_tokens(request.body, profile.max_tokens, request.endpoint),
            fee_bps=s.platform_fee_bps,
            endpoint=request.endpoint,
        )
        try:
            # On nats-py directly, as every hot message is: faststream's request adds its middlewares per call.
            reply = await self._broker.connection.request(
                subjects.RESERVE_CREDITS,
                command.model_dump_json().encode(),
                timeout=s.billing_timeout_s,
                headers=inject_headers(),
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            # Billing may have committed the hold before its answer was lost: release it (a no-op otherwise).
            self._finish(request, request.model, "failed", [])
            return errors.billing_unavailable(s.retry_after_s)
        return _ADMISSION.validate_json(reply.data)

    def expect_probe(self, request_id: str) -> asyncio.Future[AttemptFinished]:
        """A future for the report of probe ``request_id``'s attempt (the probe is no request of a client: it
        is never in flight, reserved or settled)."""
        report: asyncio.Future[AttemptFinished] = asyncio.get_running_loop().create_future()
        self._probe_reports[request_id] = report
        return report

    def forget_probe(self, request_id: str) -> None:
        self._probe_reports.pop(request_id, None)

    def attempt_for(
        self, request: RouteRequest, candidate: Candidate, attempt: int, prompt_tokens: int
    ) -> AttemptDispatch:
        """The dispatch of ``attempt`` of ``request`` to ``candidate``, its first-byte deadline set."""
        return self._attempt(request, candidate, attempt, prompt_tokens)

    async def offer(self, dispatch: AttemptDispatch) -> AttemptAccepted | None:
        """Offer ``dispatch`` to its hoster; its answer, or ``None`` when it did not take it."""
        return await self._dispatch(dispatch)

    def observe_probe_failure(self, candidate: Candidate, problem: str) -> None:
        """A probe's answer was wrong (or never came): a failure of the hoster, in this router's stats, and a
        cooldown at once (whatever the hoster reported of the attempt itself)."""
        HOSTER_FAILURES.labels(candidate.hoster.hoster_id).inc()
        now = time.time()
        self.stats.of(candidate.hoster.hoster_id, now).cool_down(now)
        self.stats.observe(
            candidate.hoster.hoster_id,
            now,
            model=candidate.offer.model,
            outcome="failed",
            chunks_sent=1,  # an answer was given, and it was wrong: as bad as breaking off midway
            ttft_ms=None,
            completion_tokens=0,
            duration_ms=0.0,
        )
        if problem.startswith("usage"):
            self.stats.of(candidate.hoster.hoster_id, now).observe_discrepancy()

    async def _dispatch(self, dispatch: AttemptDispatch) -> AttemptAccepted | None:
        """Offer the attempt to the hoster's adapters and wait for one to take it.

        The message's reply subject is the client's: the hoster may publish its frames there because it
        received this message (nats-server's response permission), and nowhere else. Its answer comes back on
        the hoster's own ``adapter.attempt.accepted`` subject, addressed to this router.
        """
        key = (dispatch.request_id, dispatch.attempt)
        answer: asyncio.Future[AttemptAccepted] = asyncio.get_running_loop().create_future()
        self._offers[key] = (dispatch.hoster_id, answer)
        try:
            await self._broker.connection.publish(
                subjects.attempt_start(dispatch.hoster_id),
                dispatch.model_dump_json().encode(),
                reply=dispatch.reply_subject,
                headers=inject_headers(),
            )
            async with asyncio.timeout(self._settings.dispatch_timeout_s):
                accepted = await answer
        except TimeoutError:
            self._log.warning("adapter did not take attempt", extra={"hoster_id": dispatch.hoster_id})
            self._early.pop(key, None)
            return None
        finally:
            self._offers.pop(key, None)
        if not accepted.accepted:
            self._early.pop(key, None)
            return None
        return accepted

    def offer_answered(self, hoster_id: str, answer: AttemptAccepted) -> None:
        """A hoster answered a dispatch; only the hoster it was offered to is heard."""
        offer = self._offers.get((answer.request_id, answer.attempt))
        if offer is not None and offer[0] == hoster_id and not offer[1].done():
            offer[1].set_result(answer)

    async def attempt_finished(self, event: AttemptFinished) -> None:
        """An attempt of a request this router owns ended: fail over, or settle and end the request."""
        probe = self._probe_reports.get(event.request_id)
        if probe is not None:
            if not probe.done():
                probe.set_result(event)
            return
        flight = self._in_flight.get(event.request_id)
        if flight is None or flight.attempt != event.attempt or flight.candidate.hoster.hoster_id != event.hoster_id:
            key = (event.request_id, event.attempt)
            offer = self._offers.get(key)
            if offer is not None and offer[0] == event.hoster_id:
                self._early[key] = event
            return
        self._probes.discard(event.hoster_id)
        if billable(event) and not flight.unbilled:
            flight.billed.append(self._billed(flight, event))
        if can_fail_over(event, flight) and await self._fail_over(flight):
            return
        del self._in_flight[event.request_id]
        self._settle(flight, event.model, event.outcome)
        if event.outcome == "failed" and event.client_error:
            await self._fail(flight, errors.rejected_by_hoster(event.upstream_status, event.error))
        elif event.outcome == "failed":
            await self._fail(
                flight, errors.all_hosters_failed() if event.chunks_sent == 0 else errors.upstream_broke_off()
            )

    def _billed(self, flight: InFlight, event: AttemptFinished) -> BilledAttempt:
        """The attempt as billing charges it (``bill_attempt``); a report past the bounds lowers the hoster's
        trust."""
        flight.reported[event.attempt] = event.usage
        billed = bill_attempt(flight.bounds, event)
        if billed.usage_discrepancy is not None:
            self._log.warning(
                "usage past its bounds", extra={"hoster_id": event.hoster_id, "why": billed.usage_discrepancy}
            )
            self._observe_discrepancy(event.hoster_id)
        return billed

    def _observe_discrepancy(self, hoster_id: str) -> None:
        self.stats.of(hoster_id, time.time()).observe_discrepancy()
        self.stats.dirty.add(hoster_id)

    async def _fail_over(self, flight: InFlight) -> bool:
        """Start the next attempt on another hoster."""
        nxt = await self._start(
            flight.route, flight.queue, flight.attempt + 1, flight.prompt_tokens, flight.bounds, before=flight
        )
        return nxt is not None

    async def cancelled(self, event: RequestCancelled) -> None:
        """The client left, or the ingress saw the serving attempt miss its first-byte deadline or stall.

        Either way the serving hoster's adapters are told to stop. A client that left gets what was made
        settled when the attempt reports. A missed deadline is the hoster's failure, reported by the router
        itself under the attempt's own message id (so the hoster's own late report is a duplicate JetStream
        drops): every router counts it, and this one fails over, or ends the request, on it.
        """
        flight = self._in_flight.get(event.request_id)
        if event.reason == "route_timeout":
            # The client was answered with an error already. Still routing it: it is dropped when the routing
            # ends; already running: its hoster is stopped and nothing is charged.
            self._abandoned.add(event.request_id)
            asyncio.get_running_loop().call_later(ABANDONED_TTL_S, self._abandoned.discard, event.request_id)
            if flight is not None:
                await self._abandon(flight)
            return
        if flight is None:
            return
        if event.reason != "client_gone" and event.attempt != flight.attempt:
            return  # an attempt already over
        hoster_id = flight.candidate.hoster.hoster_id
        stop = RequestCancelled(request_id=event.request_id).model_dump_json().encode()
        await self._broker.connection.publish(subjects.attempt_cancel(hoster_id), stop)
        if event.reason == "client_gone":
            flight.cancelled = True
            return
        self._log.warning("attempt abandoned at the ingress", extra={"hoster_id": hoster_id, "reason": event.reason})
        abandoned = AttemptFinished(
            request_id=event.request_id,
            attempt=flight.attempt,
            router_id=self.router_id,
            hoster_id=hoster_id,
            adapter_id=flight.adapter_id,
            model=flight.candidate.offer.model,
            stream=flight.route.stream,
            outcome="failed",
            usage=Usage(),
            # A stall came after the first chunk: the client has part of an answer and may not get another.
            chunks_sent=0 if event.reason == "first_byte_timeout" else 1,
            input_price=flight.candidate.offer.input_price,
            output_price=flight.candidate.offer.output_price,
            error=f"{event.reason}: the ingress gave up on the hoster",
            duration_ms=(time.monotonic() - flight.started) * 1000,
            finished_at=time.time(),
        )
        await publish_durably(
            self._broker.connection.jetstream(),
            subjects.attempt_finished(hoster_id, self.router_id),
            abandoned.model_dump_json().encode(),
            f"{event.request_id}:{flight.attempt}:{hoster_id}",
            self._log,
        )

    def _settle(self, flight: InFlight, model: str, outcome: AttemptOutcome) -> None:
        """End a request that billed something once the ingress said what reached the client (or, after
        ``delivery_wait_s``, without it: then only the request's own bounds apply)."""
        request_id = flight.route.request_id
        if flight.route.caller is None or not flight.billed:
            self._finish(flight.route, model, outcome, flight.billed)
            return
        delivered = self._deliveries.pop(request_id, None)
        if delivered is not None:
            self._finish(flight.route, model, outcome, self._held_to_text(flight, delivered))
            return
        self._undelivered[request_id] = (flight, model, outcome)
        asyncio.get_running_loop().call_later(self._settings.delivery_wait_s, self._settle_undelivered, request_id)

    def _settle_undelivered(self, request_id: str) -> None:
        waiting = self._undelivered.pop(request_id, None)
        if waiting is not None:
            flight, model, outcome = waiting
            self._log.warning("no delivery report", extra={"request_id": request_id})
            self._finish(flight.route, model, outcome, flight.billed)

    def delivered(self, note: RequestDelivered) -> None:
        """The ingress says what of a request reached the client."""
        waiting = self._undelivered.pop(note.request_id, None)
        if waiting is None:
            # Before its outcome (or for a request of another router's past): kept a little while.
            self._deliveries[note.request_id] = note
            asyncio.get_running_loop().call_later(60.0, self._deliveries.pop, note.request_id, None)
            return
        flight, model, outcome = waiting
        self._finish(flight.route, model, outcome, self._held_to_text(flight, note))

    def _held_to_text(self, flight: InFlight, note: RequestDelivered) -> list[BilledAttempt]:
        """The billed attempts held to the text the client received (``hold_to_text``); a hoster caught by
        that bound alone loses trust as for any other discrepancy."""
        billed, caught = hold_to_text(flight, note)
        if caught is not None:
            self._observe_discrepancy(caught)
        return billed

    def _finish(self, route: RouteRequest, model: str, outcome: AttemptOutcome, attempts: list[BilledAttempt]) -> None:
        """Tell billing (durably, in the background) that the request is over."""
        if route.caller is None:
            return
        leased = self._leases.finished(route.request_id)
        event = RequestFinished(
            request_id=route.request_id,
            account_id=route.caller.account_id,
            model=model,
            outcome=outcome,
            fee_bps=self._settings.platform_fee_bps,
            attempts=attempts,
            finished_at=time.time(),
            leased=leased[1] if leased is not None else None,
            lease_id=leased[0].lease_id if leased is not None else None,
        )
        self._publish(subjects.REQUEST_FINISHED, event.model_dump_json().encode(), f"{route.request_id}:finished")
        if leased is not None and leased[0].retired_at is not None and leased[0].running == 0:
            self._give_back_due(time.monotonic())

    async def drain(self) -> None:
        """Settle the requests still waiting for their delivery report, and wait for settlement events still
        being published."""
        for request_id in list(self._undelivered):
            self._settle_undelivered(request_id)
        for lease in self._leases.all(time.monotonic()):
            self._give_back(lease)
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=10.0)

    async def keep_reservations_alive(self) -> None:
        """Tell billing, every ``reservation_keepalive_s``, which requests still run here, so their reservations
        outlive the sweeper's TTL however long they stream; an error is logged, never fatal."""
        while True:
            await asyncio.sleep(self._settings.reservation_keepalive_s)
            running = [r for r, f in self._in_flight.items() if f.route.caller is not None]
            await self._keep_alive(running + list(self._undelivered), "request_ids")

    async def keep_leases_alive(self) -> None:
        """Tell billing, every ``lease_keepalive_s``, which credit leases this router holds, so they outlive
        billing's lease TTL (a lease not kept alive is recalled, or taken back); an error is logged."""
        while True:
            await asyncio.sleep(self._settings.lease_keepalive_s)
            await self._keep_alive(self._leases.held_ids(), "lease_ids")

    async def _keep_alive(self, ids: list[str], field: str) -> None:
        """``ReservationsAlive`` notes naming ``ids`` in ``field``, 2,000 a note."""
        for start in range(0, len(ids), 2000):
            note = ReservationsAlive.model_validate({"request_ids": [], field: ids[start : start + 2000]})
            try:
                await self._broker.connection.publish(subjects.RESERVATIONS_ALIVE, note.model_dump_json().encode())
            except Exception:
                self._log.exception("not kept alive", extra={"what": field})

    async def watch(self, interval_s: float = 0.5) -> None:
        """Fail over (or fail) requests whose adapter stopped heartbeating, settle those in flight for longer
        than any attempt may last, forget expired hosters; an error is logged, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._watch_once()
            except Exception:
                self._log.exception("watch round failed")

    async def _watch_once(self) -> None:
        now = time.monotonic()
        self.registry.forget_expired(now)
        self._give_back_due(now)
        for request_id, flight in list(self._in_flight.items()):
            if now - flight.started > self._settings.in_flight_max_s:
                self._log.warning(
                    "request in flight too long: settled on what it billed", extra={"request_id": request_id}
                )
                self._in_flight.pop(request_id, None)
                self._finish(flight.route, flight.candidate.offer.model, "failed", flight.billed)
                continue
            if self.registry.adapter_alive(flight.adapter_id, now):
                continue
            self._log.warning("adapter vanished mid-request", extra={"request_id": request_id})
            self._probes.discard(flight.candidate.hoster.hoster_id)
            # Whether a stream's chunks reached the client is unknown: only a non-stream fails over.
            if not flight.route.stream and flight.attempt < MAX_ATTEMPTS and await self._fail_over(flight):
                continue
            self._in_flight.pop(request_id, None)
            self._finish(flight.route, flight.candidate.offer.model, "failed", flight.billed)
            await self._fail(
                flight,
                errors.hoster_went_away(self._settings.retry_after_s),
            )

    async def _abandon(self, flight: InFlight) -> None:
        """Stop a request nobody waits for: its hoster is told to stop, no failover, nothing charged."""
        flight.cancelled = flight.unbilled = True
        flight.billed.clear()
        stop = RequestCancelled(request_id=flight.route.request_id).model_dump_json().encode()
        await self._broker.connection.publish(subjects.attempt_cancel(flight.candidate.hoster.hoster_id), stop)

    async def _fail(self, flight: InFlight, report: ErrorReport) -> None:
        frame = frames.encode(frames.ERROR, flight.attempt, -1, report.model_dump_json().encode())
        await self._broker.connection.publish(subjects.control_subject(flight.route.reply_subject), frame)
