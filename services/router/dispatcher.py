"""The request lifecycle as the router runs it: admit, dispatch, learn outcomes, fail over, settle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Callable

import orjson
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import TypeAdapter

from libs.contracts import errors, frames, subjects
from libs.contracts.billing import (
    Admission,
    BilledAttempt,
    DispatchRecord,
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
from libs.contracts.common import COMPLETIONS, EMBEDDINGS, ErrorReport
from libs.contracts.hosters import HosterHeartbeat, HosterRegistrations, LiveHoster, LiveHosters
from libs.contracts.models import RegisteredModels
from libs.contracts.pricing import UsageBounds, rate_limited_tokens, requested_max_tokens
from libs.contracts.routing import (
    AttemptAccepted,
    AttemptDispatch,
    AttemptFinished,
    AttemptObserved,
    AttemptOutcome,
    AttemptsObserved,
    RequestCancelled,
    RequestDelivered,
    RouteAccepted,
    RouteRejected,
    RouteRequest,
)
from libs.contracts.verification import SpotCheckJudged
from libs.platform.broker import publish_durably
from libs.platform.metrics import ATTEMPTS, HOSTER_FAILURES, IN_FLIGHT
from libs.platform.telemetry import REQUEST_ID, inject_headers
from libs.tokens import (
    ChatTemplateError,
    RegisteredTokenizers,
    count_chat_prompt,
    count_embedding_input,
    count_text_prompt,
)
from services.router.covert import RecentIngresses
from services.router.leases import Lease, LeaseBook
from services.router.service import (
    AUTO_MODEL,
    MAX_ATTEMPTS,
    Candidate,
    FirstByteBudget,
    HosterRegistry,
    InFlight,
    NoEligibleHoster,
    RequestProfile,
    Run,
    can_fail_over,
    charge,
    claimed_outcome,
    delivery_due,
    first_byte_deadline_ms,
    max_cost,
    order_candidates,
    prefer_healthy,
    record_of,
    speed_of,
)
from services.router.settings import RouterSettings
from services.router.stats import HosterStats, NetworkStats
from services.router.verification import FAILED, Verifications

_ADMISSION: TypeAdapter[Reserved | Refused] = TypeAdapter(Admission)
_LEASE_ANSWER: TypeAdapter[LeaseAnswer] = TypeAdapter(LeaseAnswer)
# How many leases one request may wait for before it is admitted by billing instead.
LEASE_ASKS = 3
# How long a route_timeout is remembered for a request this router may still be routing.
ABANDONED_TTL_S = 60.0
# How long the router believes billing's list of registered models (``registered_models``).
REGISTERED_CACHE_S = 5.0
# How often a router tells the others what it observed of its attempts (``AttemptsObserved``), at most.
OBSERVED_FLUSH_S = 0.05
# Observations one broadcast carries at most.
OBSERVED_BATCH = 500


class Dispatcher:
    """Owns the registry, the observed stats and the in-flight requests of one router instance."""

    def __init__(self, settings: RouterSettings, router_id: str, broker: NatsBroker, logger: logging.Logger):
        self.router_id = router_id
        self.registry = HosterRegistry(ttl_s=settings.hoster_ttl_s)
        self.stats = NetworkStats()
        # Every hoster's spot check verdict per model, and the models' reference hosters.
        self.verifications = Verifications()
        # Set at the first heartbeat heard (a router that just started waits for it before routing).
        self.heard_hoster = asyncio.Event()
        self._settings = settings
        self._broker = broker
        self._log = logger
        self._in_flight: dict[str, InFlight] = {}
        self._probes: set[str] = set()
        # The ingresses of the last requests routed: a probe's reply subject names one (``covert``).
        self.ingresses = RecentIngresses()
        # Dispatches waiting for their hoster's answer: (request, attempt) -> (hoster, answer).
        self._offers: dict[tuple[str, int], tuple[str, asyncio.Future[AttemptAccepted]]] = {}
        # Outcomes heard while their dispatch still waited for its answer (the accept and the outcome arrive on
        # two subscriptions, so a fast failure can be handled first); replayed once the attempt is in flight.
        self._early: dict[tuple[str, int], AttemptFinished] = {}
        # Probe requests waiting for their attempt's report (see ``services.router.probes``).
        self._probe_reports: dict[str, asyncio.Future[AttemptFinished]] = {}
        # When each request waiting for the ingress's note, or for its serving attempt's report, stops waiting.
        self._waits: dict[str, asyncio.TimerHandle] = {}
        # Observations of this router's attempts not yet told to the other routers.
        self._observed: list[AttemptObserved] = []
        self._observed_flush: asyncio.TimerHandle | None = None
        # The registered models' tokenizers (billing's registry), loaded on first use.
        self._tokenizers = RegisteredTokenizers(self._request_bytes)
        self._registered: tuple[float, frozenset[str]] = (-REGISTERED_CACHE_S, frozenset())
        self._speed_bounds: dict[str, float] = {}
        # Set whenever the last request in flight settles (what ``drain`` waits for).
        self._none_in_flight = asyncio.Event()
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

    async def _request_bytes(self, subject: str, data: bytes, timeout_s: float) -> bytes:
        reply = await self._broker.connection.request(subject, data, timeout=timeout_s)
        payload: bytes = reply.data
        return payload

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

    async def keep_registered_models(self) -> None:
        """``registered_models`` every ``REGISTERED_CACHE_S``, for ever, so the speed bounds settlements use
        are at most that old; an error is logged, never fatal."""
        while True:
            await self.registered_models()
            await asyncio.sleep(REGISTERED_CACHE_S)

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
                    implausible_speeds=stats.implausible_speeds,
                    speed_suspicious_models=stats.speed_suspicious_models,
                    verifications=(
                        {o.model: self.verifications.of(hoster_id, o.model, wall) for o in status.models}
                        if status
                        else {}
                    ),
                )
            )
        return LiveHosters(hosters=report)

    def mark_spot_checks(self, hoster_id: str, wall: float) -> HosterStats:
        """Tell the hoster's stats whether its spot checks failed it on a model (trust's dishonesty term)."""
        stats = self.stats.of(hoster_id, wall)
        stats.failed_spot_checks = bool(self.verifications.failed_models(hoster_id, wall))
        return stats

    def observe_spot_check(self, judged: SpotCheckJudged) -> None:
        """Fold one judged spot check (this router's or another's broadcast) into the verdicts: a hoster
        failed on a model is dishonest in its trust, and cooled down at each check it fails while failed."""
        before, after = self.verifications.fold(judged.hoster_id, judged.model, judged.evidence)
        wall = time.time()
        stats = self.mark_spot_checks(judged.hoster_id, wall)
        if after == FAILED and not judged.evidence.passed:
            stats.cool_down(wall)
        if before != after:
            self._log.warning(
                "spot check verdict changed",
                extra={"hoster_id": judged.hoster_id, "model": judged.model, "verdict": after, "was": before},
            )

    def observe_attempt(self, observation: AttemptObserved) -> None:
        """Fold one attempt as a router judged it into the stats (this router's own, or another's broadcast)."""
        ATTEMPTS.labels(observation.outcome).inc()
        if observation.outcome == "failed" and not observation.client_error:
            HOSTER_FAILURES.labels(observation.hoster_id).inc()
        now = time.time()
        self.stats.observe(
            observation.hoster_id,
            now,
            model=observation.model,
            outcome=observation.outcome,
            chunks_sent=observation.chunks_sent,
            ttft_ms=observation.ttft_ms,
            completion_tokens=observation.completion_tokens,
            duration_ms=observation.duration_ms,
            client_error=observation.client_error,
            tokens_per_s=observation.tokens_per_s,
            implausible_speed=observation.implausible_speed,
        )
        if observation.discrepancy:
            self._observe_discrepancy(observation.hoster_id)

    def observed_elsewhere(self, batch: AttemptsObserved) -> None:
        """Another router's observations of the attempts it dispatched (its own were folded already)."""
        if batch.router_id == self.router_id:
            return
        for observation in batch.observations:
            self.observe_attempt(observation)

    def _observed_here(self, observation: AttemptObserved) -> None:
        """Fold an observation of this router's and tell the others, in batches off the request's path."""
        self.observe_attempt(observation)
        self._observed.append(observation)
        if self._observed_flush is None:
            self._observed_flush = asyncio.get_running_loop().call_later(OBSERVED_FLUSH_S, self._flush_observed)

    def _flush_observed(self) -> None:
        self._observed_flush = None
        pending, self._observed = self._observed, []
        for start in range(0, len(pending), OBSERVED_BATCH):
            batch = AttemptsObserved(router_id=self.router_id, observations=pending[start : start + OBSERVED_BATCH])
            task = asyncio.create_task(
                self._broker.connection.publish(subjects.ATTEMPTS_OBSERVED, batch.model_dump_json().encode())
            )
            task.add_done_callback(_log_failure(self._log, "observations not told"))

    async def route(self, request: RouteRequest) -> RouteAccepted | RouteRejected:
        """Order the eligible hosters, have billing admit the request, then start its first attempt."""
        REQUEST_ID.set(request.request_id)
        self.ingresses.saw(request.reply_subject)
        s = self._settings
        profile = RequestProfile.of(request.body, s.default_max_tokens, request.endpoint)
        bounds = UsageBounds.of(request.body, len(orjson.dumps(request.body)), s.default_max_tokens, request.endpoint)
        counted = await self._count_prompt(request)
        if counted is not None:
            # Reserved, bounded and billed on the network's own count, not on the body's bytes.
            profile = dataclasses.replace(profile, prompt_tokens=counted)
            bounds = bounds.with_prompt_count(counted)
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
                self.verifications,
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
            flight = await self._start(request, candidates, profile.prompt_tokens, bounds, counted=counted)
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
        # The attempt this routing started: should it have failed over already, the ingress hears of the next
        # from its notice, after this.
        first = flight.runs[0]
        return RouteAccepted(
            hoster_id=first.hoster_id,
            model=first.candidate.offer.model,
            attempt=first.attempt,
            reply_subject=first.reply_subject,
            headers=headers,
            first_byte_deadline_ms=first.first_byte_deadline_ms,
            prompt_bound=flight.bounds.prompt,
            prompt_tokens=flight.counted_prompt,
            completion_bound=flight.bounds.completion,
            input_price=first.candidate.offer.input_price,
            output_price=first.candidate.offer.output_price,
            fee_bps=s.platform_fee_bps,
            router_id=self.router_id,
        )

    async def _start(
        self,
        request: RouteRequest,
        queue: list[Candidate],
        prompt_tokens: int,
        bounds: UsageBounds,
        flight: InFlight | None = None,
        counted: int | None = None,
    ) -> InFlight | None:
        """Offer the request to the first candidate in ``queue`` whose adapter takes it, each offer a new attempt
        number with a reply subject of its own. A failover (``flight`` given) names the attempt that serves to
        the ingress once its hoster took it, never before: a hoster that declines is never read (an outcome
        heard before the acceptance is replayed at once)."""
        if flight is not None:
            prefer_healthy(queue, self.stats, time.time())
        offers = flight.offers if flight is not None else 0
        while queue:
            candidate = queue.pop(0)
            offers += 1
            reply = subjects.offer_subject(request.reply_subject, offers, secrets.token_hex(12))
            dispatch = self._attempt(request, candidate, offers, prompt_tokens, reply)
            accepted = await self._dispatch(dispatch)
            if accepted is None:
                continue
            hoster_id = candidate.hoster.hoster_id
            if self.stats.of(hoster_id, time.time()).probing(time.time()):
                self._probes.add(hoster_id)
            run = Run(offers, candidate, accepted.adapter_id, reply, time.monotonic(), dispatch.first_byte_deadline_ms)
            if flight is not None and flight.settled:
                # The request ended while this hoster was taking it (the client's response is over): stop it.
                stop = RequestCancelled(request_id=request.request_id).model_dump_json().encode()
                await self._broker.connection.publish(subjects.attempt_cancel(hoster_id), stop)
                return None
            if flight is None:
                flight = InFlight(request, queue, prompt_tokens, bounds, [run], offers, counted_prompt=counted)
            else:
                flight.runs.append(run)
                flight.offers = offers
                body = orjson.dumps(
                    {
                        "hoster_id": hoster_id,
                        "model": candidate.offer.model,
                        "first_byte_deadline_ms": dispatch.first_byte_deadline_ms,
                        "input_price": candidate.offer.input_price,
                        "output_price": candidate.offer.output_price,
                        "reply_subject": reply,
                    }
                )
                await self._broker.connection.publish(
                    subjects.control_subject(request.reply_subject), frames.encode(frames.ATTEMPT, offers, -1, body)
                )
            self._in_flight[request.request_id] = flight
            early = self._early.pop((request.request_id, offers), None)
            if early is not None:
                await self.attempt_finished(early)
            return flight
        if flight is not None:
            flight.offers = offers
        return None

    def _attempt(
        self, request: RouteRequest, candidate: Candidate, attempt: int, prompt_tokens: int, reply_subject: str
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
            reply_subject=reply_subject,
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

    async def registered_models(self) -> frozenset[str]:
        """The models registered with their tokenizers, as billing said at most ``REGISTERED_CACHE_S`` ago
        (what it said last while it does not answer); their speed bounds with them (``max_tokens_per_s``)."""
        now = time.monotonic()
        if now - self._registered[0] >= REGISTERED_CACHE_S:
            self._registered = (now, self._registered[1])  # one question at a time
            try:
                reply = await self._request_bytes(subjects.LIST_TOKENIZERS, b"", self._settings.billing_timeout_s)
                listing = RegisteredModels.model_validate_json(reply)
                self._registered = (now, frozenset(listing.models))
                self._speed_bounds = listing.max_tokens_per_s
                self.verifications.references = {m: frozenset(h) for m, h in listing.references.items()}
            except Exception as exc:
                self._log.warning("registered models unknown", extra={"error": repr(exc)})
        return self._registered[1]

    def max_tokens_per_s(self, model: str) -> float:
        """The plausibility bound on a hoster's speed serving ``model``: its registration's, else the
        router's default (``CS_ROUTER_MAX_TOKENS_PER_S``)."""
        return self._speed_bounds.get(model, self._settings.max_tokens_per_s)

    async def _count_prompt(self, request: RouteRequest) -> int | None:
        """The request's prompt tokens counted with its model's registered tokenizer (``libs.tokens``), or
        ``None``: the model is not registered (its usage is held to the byte bounds alone, "not verified"),
        the request may be served by other models (``auto``, fallbacks: their tokenizers may differ), billing
        cannot say, or the body cannot be rendered (the hoster will say why)."""
        if request.model == AUTO_MODEL or request.routing.fallback_models:
            return None
        try:
            tokenizer = await self._tokenizers.get(request.model)
        except Exception as exc:  # billing away or a broken registration: counted by the bounds meanwhile
            self._log.warning("tokenizer unavailable", extra={"model": request.model, "error": repr(exc)})
            return None
        if tokenizer is None:
            return None
        try:
            if request.endpoint == EMBEDDINGS:
                return count_embedding_input(tokenizer, request.body.get("input"))
            if request.endpoint == COMPLETIONS:
                return count_text_prompt(tokenizer, request.body.get("prompt"))
            return count_chat_prompt(tokenizer, request.body)
        except (ValueError, ChatTemplateError) as exc:
            self._log.info("prompt not counted", extra={"model": request.model, "error": str(exc)})
            return None

    async def _admit_leased(self, request: RouteRequest, amount: int) -> bool:
        """Admit the request against a credit lease on its account (asking billing for one when none covers
        it); ``False`` when it must go to billing instead: its key has rate limits (counted by billing, exactly,
        across routers), leases are off, or billing holds no lease for it (too little credit left to share)."""
        caller = request.caller
        assert caller is not None
        s = self._settings
        if not s.lease_requests or caller.rpm is not None or caller.tpm is not None or amount <= 0:
            return False  # a free request (every hoster at price 0) holds nothing: billing admits it
        admission = LeasedAdmission(
            request_id=request.request_id,
            key_id=caller.key_id,
            amount=amount,
            fee_bps=s.platform_fee_bps,
            endpoint=request.recorded_api,
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
            endpoint=request.recorded_api,
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
        self, request: RouteRequest, candidate: Candidate, attempt: int, prompt_tokens: int, reply_subject: str
    ) -> AttemptDispatch:
        """The dispatch of ``attempt`` of ``request`` to ``candidate`` answering on ``reply_subject``, its
        first-byte deadline set."""
        return self._attempt(request, candidate, attempt, prompt_tokens, reply_subject)

    async def offer(self, dispatch: AttemptDispatch) -> AttemptAccepted | None:
        """Offer ``dispatch`` to its hoster; its answer, or ``None`` when it did not take it."""
        return await self._dispatch(dispatch)

    def observe_probe(
        self, candidate: Candidate, outcome: AttemptOutcome, duration_ms: float, tokens: int, ttft_ms: float = 0.0
    ) -> None:
        """A probe's outcome as the router judged it (its clock, the answer it read), in every router's stats;
        ``ttft_ms``: when its first content came (a non-stream answer's is its duration); its speed from
        those times and the tokens it counted (``speed_of``), held to the model's bound."""
        ttft = (ttft_ms or duration_ms) if outcome == "succeeded" else None
        tokens_per_s, implausible = speed_of(
            tokens if outcome == "succeeded" else 0, ttft, duration_ms, self.max_tokens_per_s(candidate.offer.model)
        )
        self._observed_here(
            AttemptObserved(
                hoster_id=candidate.hoster.hoster_id,
                model=candidate.offer.model,
                outcome=outcome,
                chunks_sent=1 if outcome == "succeeded" else 0,
                ttft_ms=ttft,
                completion_tokens=tokens,
                duration_ms=duration_ms,
                tokens_per_s=tokens_per_s,
                implausible_speed=implausible,
            )
        )

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
        """A hoster's report on an attempt this router dispatched: a claim, checked against the router's own
        record of the attempt (its number, its hoster). A failure fails over or ends the request; a success
        or a cancel waits for the ingress's word on what reached the client before anything is settled."""
        probe = self._probe_reports.get(event.request_id)
        if probe is not None:
            if not probe.done():
                probe.set_result(event)
            return
        flight = self._in_flight.get(event.request_id)
        if flight is None or flight.attempt != event.attempt or flight.current.hoster_id != event.hoster_id:
            key = (event.request_id, event.attempt)
            offer = self._offers.get(key)
            if offer is not None and offer[0] == event.hoster_id:
                self._early[key] = event
            return
        run = flight.current
        if run.report is not None:
            return  # a second report of the same attempt changes nothing
        run.report = event
        if run.outcome is not None:
            return  # the router judged it already (the ingress gave up on it): the claim is kept, nothing moves
        self._probes.discard(event.hoster_id)
        outcome, error = claimed_outcome(event, flight)
        if outcome != "failed":
            if run.outcome is None:
                run.ended = time.monotonic()
            self._wait_for_delivery(flight)
            return
        run.end("failed", time.monotonic(), error, event.client_error)
        await self._after_failure(flight, event.upstream_status)

    async def _after_failure(self, flight: InFlight, upstream_status: int | None = None, sent: bool = False) -> None:
        """The serving attempt failed: the next hoster takes the request, or the client is told it failed (and
        the request settles once the ingress's note is in). ``sent``: the client has part of an answer."""
        run = flight.current
        if can_fail_over(flight) and await self._fail_over(flight):
            return
        flight.over = True
        if run.client_error:
            await self._fail(flight, errors.rejected_by_hoster(upstream_status, run.error))
        else:
            sent = sent or (not run.silent and run.report is not None and run.report.chunks_sent > 0)
            await self._fail(flight, errors.upstream_broke_off() if sent else errors.all_hosters_failed())
        self._wait_for_delivery(flight)

    def _observe_discrepancy(self, hoster_id: str) -> None:
        now = time.time()
        self.stats.of(hoster_id, now).observe_discrepancy(now, self._settings.discrepancies_to_cool)
        self.stats.dirty.add(hoster_id)

    async def _fail_over(self, flight: InFlight) -> bool:
        """Start the next attempt on another hoster (the failed one's wait for a note ends: another serves)."""
        wait = self._waits.pop(flight.route.request_id, None)
        if wait is not None:
            wait.cancel()
        return await self._start(flight.route, flight.queue, flight.prompt_tokens, flight.bounds, flight) is not None

    async def cancelled(self, event: RequestCancelled) -> None:
        """The client left, or the ingress saw the serving attempt miss its first-byte deadline or stall.

        Either way the serving hoster's adapters are told to stop. A client that left gets what was made
        billed once the ingress says what reached it. A missed deadline is the hoster's failure, whatever the
        hoster reports (the ingress received nothing, or stopped receiving): this router fails over, or ends
        the request, on it, and its late report changes nothing.
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
        run = flight.current
        if event.reason != "client_gone" and run.outcome == "failed":
            return  # failed already (its report came first): its failover is under way
        stop = RequestCancelled(request_id=event.request_id).model_dump_json().encode()
        await self._broker.connection.publish(subjects.attempt_cancel(run.hoster_id), stop)
        if event.reason == "client_gone":
            flight.cancelled = True
            return
        self._log.warning(
            "attempt abandoned at the ingress", extra={"hoster_id": run.hoster_id, "reason": event.reason}
        )
        run.outcome = None  # whatever the hoster claimed: the ingress received nothing (more)
        run.end("failed", time.monotonic(), f"{event.reason}: the ingress gave up on the hoster")
        if event.reason == "stalled":
            flight.over = True  # the client has part of an answer and may not get another
        else:
            run.silent = True
        await self._after_failure(flight, sent=event.reason == "stalled")

    def delivered(self, note: RequestDelivered) -> None:
        """The ingress's word on what of a request reached the client, sent once when the client's response
        ended: nothing more can reach it, so the request settles as soon as the serving attempt's report is in
        (or the wait for it is over)."""
        flight = self._in_flight.get(note.request_id)
        if flight is None or flight.note is not None:
            return
        flight.note = note
        flight.over = True
        run = flight.current
        if run.report is not None or run.outcome is not None:
            self._settle(note.request_id)
            return
        self._wait(flight, time.monotonic() + self._settings.delivery_wait_s)

    def _wait_for_delivery(self, flight: InFlight) -> None:
        """The serving attempt is over: settle now if the ingress's note is in, else when it comes or when the
        wait for it ends (``delivery_due``; then nothing reached the client that the network knows of)."""
        if flight.note is not None:
            self._settle(flight.route.request_id)
            return
        self._wait(flight, delivery_due(flight.current, time.monotonic(), self._settings.delivery_wait_s))

    def _wait(self, flight: InFlight, due: float) -> None:
        request_id = flight.route.request_id
        previous = self._waits.pop(request_id, None)
        if previous is not None:
            previous.cancel()
        delay = max(0.0, due - time.monotonic())
        self._waits[request_id] = asyncio.get_running_loop().call_later(delay, self._settle, request_id)

    def _settle(self, request_id: str) -> None:
        """End a request on the network's records: each attempt's verdict, what was billed for the one whose
        content reached the client (``charge``); told to billing, durably, and to every router's stats."""
        wait = self._waits.pop(request_id, None)
        if wait is not None:
            wait.cancel()
        flight = self._in_flight.pop(request_id, None)
        if flight is None:
            return
        flight.settled = True
        for run in flight.runs:
            self._probes.discard(run.hoster_id)
        if not self._in_flight:
            self._none_in_flight.set()
        now, wall = time.monotonic(), time.time()
        note = flight.note
        if note is None:
            self._log.warning("no delivery note: nothing billed", extra={"request_id": request_id})
        billed: list[BilledAttempt] = []
        records: list[DispatchRecord] = []
        for run in flight.runs:
            cost = None if flight.unbilled else charge(run, flight.bounds, note, flight.counted_prompt)
            if cost is not None:
                billed.append(cost)
                if cost.usage_discrepancy is not None:
                    self._log.warning("usage past its bounds", extra={"hoster_id": run.hoster_id,
                                                                      "why": cost.usage_discrepancy})  # fmt: skip
            bound = self.max_tokens_per_s(run.candidate.offer.model)
            verification = self.verifications.of(run.hoster_id, run.candidate.offer.model, wall)
            record, observation = record_of(run, flight.route, note, cost, now, wall, bound, verification)
            records.append(record)
            self._observed_here(observation)
        last = records[-1]
        self._finish(flight.route, last.model, last.outcome, billed, records)

    def _finish(
        self,
        route: RouteRequest,
        model: str,
        outcome: AttemptOutcome,
        attempts: list[BilledAttempt],
        records: list[DispatchRecord] | None = None,
    ) -> None:
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
            records=records or [],
        )
        self._publish(subjects.REQUEST_FINISHED, event.model_dump_json().encode(), f"{route.request_id}:finished")
        if leased is not None and leased[0].retired_at is not None and leased[0].running == 0:
            self._give_back_due(time.monotonic())

    async def drain(self, wait_s: float = 10.0) -> None:
        """Before the router stops (its routes are no longer taken): wait up to ``wait_s`` for its requests
        to end as usual (their reports and the ingress's notes still arrive), settle those still open on what
        it knows, give its leases back, and wait for the settlement events still being published."""
        if self._in_flight:
            self._none_in_flight.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_in_flight.wait(), wait_s)
        for request_id in list(self._in_flight):
            self._log.warning("settled at shutdown on what it billed", extra={"request_id": request_id})
            self._settle(request_id)
        if self._observed_flush is not None:
            self._observed_flush.cancel()
            self._flush_observed()
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
            await self._keep_alive(running, "request_ids")

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
                self._log.warning("request in flight too long: settled on what it billed",
                                  extra={"request_id": request_id})  # fmt: skip
                flight.current.end("failed", now, "in flight longer than any attempt may last")
                self._settle(request_id)
                continue
            run = flight.current
            if run.outcome is not None or run.report is not None or self.registry.adapter_alive(run.adapter_id, now):
                continue
            self._log.warning("adapter vanished mid-request", extra={"request_id": request_id})
            self._probes.discard(run.hoster_id)
            run.end("failed", now, "the hoster's adapter went away")
            # Whether a stream's chunks reached the client is unknown: only a non-stream fails over.
            if not flight.route.stream and can_fail_over(flight) and await self._fail_over(flight):
                continue
            flight.over = True
            await self._fail(flight, errors.hoster_went_away(self._settings.retry_after_s))
            self._wait_for_delivery(flight)

    async def _abandon(self, flight: InFlight) -> None:
        """Stop a request nobody waits for (no ingress will send a note): its hoster is told to stop, and it
        settles at once with nothing charged."""
        flight.cancelled = flight.unbilled = flight.over = True
        stop = RequestCancelled(request_id=flight.route.request_id).model_dump_json().encode()
        await self._broker.connection.publish(subjects.attempt_cancel(flight.current.hoster_id), stop)
        flight.current.end("cancelled", time.monotonic(), "the ingress stopped waiting for the route")
        self._settle(flight.route.request_id)

    async def _fail(self, flight: InFlight, report: ErrorReport) -> None:
        frame = frames.encode(frames.ERROR, flight.attempt, -1, report.model_dump_json().encode())
        await self._broker.connection.publish(subjects.control_subject(flight.route.reply_subject), frame)


def _log_failure(logger: logging.Logger, what: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that logs a background publish's failure."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning(what, extra={"error": repr(task.exception())})

    return done
