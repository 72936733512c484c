"""The router's domain: the registry of live hosters, the choice of one for a request, and the rules of a
request's lifecycle (what it reserves, when it fails over, what each attempt is billed). No I/O here."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from libs.contracts import errors
from libs.contracts.billing import BilledAttempt, attempt_billable
from libs.contracts.common import CHAT, Endpoint, ErrorReport, Usage, endpoint_path
from libs.contracts.hosters import (
    HosterHeartbeat,
    HosterStatus,
    LiveModel,
    ModelOffer,
    RegisteredHoster,
    hoster_uuid,
    name_key,
)
from libs.contracts.pricing import (
    IMAGE_PARTS,
    UsageBounds,
    client_price,
    cost_of,
    estimate_prompt_tokens,
    requested_max_tokens,
)
from libs.contracts.routing import AttemptFinished, RankBy, RequestDelivered, RouteRequest, RoutingPreferences
from services.router.stats import TRUSTED, NetworkStats

AUTO_MODEL = "auto"


@dataclass(slots=True, frozen=True)
class Candidate:
    """One hoster able to serve one model, as the router would dispatch to it. ``registered_name``: the
    name the hoster registered under, the only one a client may name it by (``None`` when the router knows
    it only from its heartbeats, whose ``hoster.name`` is the hoster's own claim)."""

    hoster: HosterStatus
    offer: ModelOffer
    adapter_id: str
    registered_name: str | None = None

    @property
    def load(self) -> float:
        """Share of the hoster's capacity in use."""
        return self.hoster.in_flight / max(1, self.hoster.capacity)


@dataclass(slots=True)
class _Seen:
    status: HosterStatus
    adapter_id: str
    at: float


@dataclass
class HosterRegistry:
    """Live hosters fed by adapter heartbeats, and every model the network ever served.

    A hoster may run several adapters (replicas of its agent): each heartbeats on its own, and the hoster's
    load is the sum of theirs, so its declared capacity holds across replicas. What a hoster registered
    (``registrations``: name, region, cloud, revoked) overrides what its heartbeats claim. A hoster known
    only from its heartbeats (billing had not answered, or the platform fronts it unregistered) is routed
    on their cloud and region, and has no name a client can pick it by.
    """

    ttl_s: float
    _hosters: dict[str, dict[str, _Seen]] = field(default_factory=dict)
    _adapters: dict[str, float] = field(default_factory=dict)
    models_seen: dict[str, int] = field(default_factory=dict)
    registrations: dict[str, RegisteredHoster] = field(default_factory=dict)

    def observe(self, heartbeat: HosterHeartbeat, now: float, wall: int) -> list[str]:
        """Record a heartbeat at monotonic ``now``; return models never seen before (to be persisted)."""
        self._adapters[heartbeat.adapter_id] = now
        new_models = []
        for status in heartbeat.hosters:
            registered = self.registrations.get(status.hoster_id)
            if registered is not None:
                if registered.revoked:
                    continue
                status = status.model_copy(
                    update={"name": registered.name, "cloud": registered.cloud, "region": registered.region}
                )
            self._hosters.setdefault(status.hoster_id, {})[heartbeat.adapter_id] = _Seen(
                status, heartbeat.adapter_id, now
            )
            for offer in status.models:
                if offer.model not in self.models_seen:
                    self.models_seen[offer.model] = wall
                    new_models.append(offer.model)
        return new_models

    def register(self, registrations: list[RegisteredHoster]) -> None:
        """Take billing's registrations; a revoked hoster leaves the registry at once."""
        self.registrations = {r.hoster_id: r for r in registrations}
        for hoster_id in [h for h in self._hosters if h in self.registrations and self.registrations[h].revoked]:
            del self._hosters[hoster_id]

    def adapter_alive(self, adapter_id: str, now: float) -> bool:
        """Whether ``adapter_id`` heartbeated within the TTL."""
        seen = self._adapters.get(adapter_id)
        return seen is not None and now - seen <= self.ttl_s

    def forget_expired(self, now: float) -> None:
        """Drop hosters and adapters whose heartbeats stopped."""
        for hoster_id, adapters in list(self._hosters.items()):
            for adapter_id in [a for a, s in adapters.items() if now - s.at > self.ttl_s]:
                del adapters[adapter_id]
            if not adapters:
                del self._hosters[hoster_id]
        for adapter_id in [a for a, at in self._adapters.items() if now - at > self.ttl_s]:
            del self._adapters[adapter_id]

    def statuses(self, now: float) -> list[tuple[HosterStatus, str]]:
        """Each live hoster once, its load summed over its live adapters, with its latest adapter."""
        out = []
        for adapters in self._hosters.values():
            live = sorted((s for s in adapters.values() if now - s.at <= self.ttl_s), key=lambda s: s.at)
            if not live:
                continue
            latest = live[-1]
            status = latest.status
            if len(live) > 1:
                status = status.model_copy(update={"in_flight": sum(s.status.in_flight for s in live)})
            out.append((status, latest.adapter_id))
        return out

    def live(self, now: float) -> list[Candidate]:
        """Every (hoster, model) pair alive now."""
        out: list[Candidate] = []
        for status, adapter_id in self.statuses(now):
            registered = self.registrations.get(status.hoster_id)
            name = registered.name if registered is not None and not registered.revoked else None
            out.extend(Candidate(status, offer, adapter_id, name) for offer in status.models)
        return out

    def live_models(self, now: float) -> list[LiveModel]:
        """The models live now, summarised over their hosters, sorted by id."""
        by_model: dict[str, list[Candidate]] = {}
        for candidate in self.live(now):
            by_model.setdefault(candidate.offer.model, []).append(candidate)
        listing = []
        for model, candidates in sorted(by_model.items()):
            offers = [c.offer for c in candidates]
            contexts = [o.context_length for o in offers if o.context_length]
            listing.append(
                LiveModel(
                    id=model,
                    hosters=len({c.hoster.hoster_id for c in candidates}),
                    min_input_price=min(o.input_price for o in offers),
                    max_input_price=max(o.input_price for o in offers),
                    min_output_price=min(o.output_price for o in offers),
                    max_output_price=max(o.output_price for o in offers),
                    context_length=max(contexts) if contexts else None,
                    first_seen=self.models_seen.get(model, 0),
                    endpoints=sorted({e for o in offers for e in o.endpoints}),
                )
            )
        return listing


class NoEligibleHoster(Exception):
    """No hoster can take the request; ``report`` says why, for the client."""

    def __init__(self, report: ErrorReport) -> None:
        super().__init__(report.message)
        self.report = report


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """What the request needs from a model, read from its body and the endpoint it came through."""

    prompt_tokens: int
    max_tokens: int
    needs: frozenset[str] = frozenset()
    parameters: frozenset[str] = frozenset()
    endpoint: Endpoint = CHAT

    @classmethod
    def of(cls, body: dict[str, Any], default_max_tokens: int, endpoint: Endpoint = CHAT) -> RequestProfile:
        """The profile of a request body sent to ``endpoint``."""
        needs = set()
        if body.get("tools") or body.get("functions"):
            needs.add("tools")
        if isinstance(body.get("response_format"), dict) and body["response_format"].get("type") != "text":
            needs.add("json")
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content):
                needs.add("vision")
        parameters = frozenset(body) - {"model", "messages", "prompt", "input", "stream"}
        return cls(
            estimate_prompt_tokens(body),
            requested_max_tokens(body, default_max_tokens, endpoint),
            frozenset(needs),
            parameters,
            endpoint,
        )

    def serves(self, offer: ModelOffer) -> bool:
        """Whether ``offer`` serves the endpoint this request came through."""
        return self.endpoint in offer.endpoints

    def fits(self, offer: ModelOffer) -> bool:
        """Whether ``offer`` serves this endpoint and has the context length and capabilities it needs."""
        if not self.serves(offer):
            return False
        if offer.context_length is not None and self.prompt_tokens + self.max_tokens > offer.context_length:
            return False
        return self.needs <= set(offer.capabilities)


# Time to first token assumed when no candidate has been measured and none promised anything.
UNKNOWN_TTFT_MS = 1000.0
# Tokens per second assumed when no candidate has been measured.
UNKNOWN_TPS = 50.0
# Differences in time to first token below this do not tell hosters apart (network jitter, not speed).
LATENCY_FLOOR_MS = 50.0
# Hosters whose speeds are within this factor of the best count as equal and share the load.
NEAR_EQUAL = 1.15
# How strongly ``balanced`` prefers a better score (see ``_rank``).
BALANCE_SHARPNESS = 7.0


@dataclass(frozen=True, slots=True)
class Choice:
    """What the router knows of a candidate when it orders them."""

    candidate: Candidate
    price: int
    ttft_ms: float
    trust: float
    tokens_per_s: float = UNKNOWN_TPS


def _median(values: list[float], default: float) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else default


def _choices(candidates: list[Candidate], stats: NetworkStats, profile: RequestProfile, now: float) -> list[Choice]:
    """What the router knows of each candidate. A hoster never measured is assumed as fast as it promised,
    else as the median of those measured (its tokens per second too): new hosters get their share of traffic,
    and so get measured."""
    measured: list[tuple[Candidate, float | None, float | None]] = []
    for candidate in candidates:
        hoster = stats.of(candidate.hoster.hoster_id, now)
        hoster.advertised_ttft_ms = candidate.hoster.advertised_ttft_ms
        speed = hoster.speed.get(candidate.offer.model)
        measured.append((candidate, speed.expected_ttft_ms if speed else None, speed.tps_ewma if speed else None))
    typical_ttft = _median([t for _, t, _ in measured if t is not None], UNKNOWN_TTFT_MS)
    typical_tps = _median([r for _, _, r in measured if r is not None], UNKNOWN_TPS)
    return [
        Choice(
            candidate,
            profile.prompt_tokens * candidate.offer.input_price + profile.max_tokens * candidate.offer.output_price,
            ttft if ttft is not None else (candidate.hoster.advertised_ttft_ms or typical_ttft),
            stats.of(candidate.hoster.hoster_id, now).trust(now),
            tps if tps is not None else typical_tps,
        )
        for candidate, ttft, tps in measured
    ]


@dataclass(frozen=True, slots=True)
class HosterRefs:
    """Hosters a client named, in order: by UUID, or by registered name (equal but for ASCII case,
    ``name_key``). A UUID never matches by name, so no hoster passes for another by registering that one's
    id as its name; and only a registered name matches, never the name a hoster's heartbeat claims (live
    hosters' registered names are unique: billing's database refuses a second)."""

    ids: dict[str, int]
    names: dict[str, int]

    @classmethod
    def of(cls, refs: list[str]) -> HosterRefs:
        """Each ref at its first position."""
        ids: dict[str, int] = {}
        names: dict[str, int] = {}
        for i, ref in enumerate(refs):
            hoster_id = hoster_uuid(ref)
            if hoster_id is not None:
                ids.setdefault(hoster_id, i)
            else:
                names.setdefault(name_key(ref), i)
        return cls(ids, names)

    def position(self, candidate: Candidate) -> int | None:
        """Where the candidate's hoster is first named, or ``None``."""
        by_id = self.ids.get(candidate.hoster.hoster_id)
        name = candidate.registered_name
        by_name = None if name is None else self.names.get(name_key(name))
        return by_id if by_name is None else by_name if by_id is None else min(by_id, by_name)

    def keep(self, c: Choice) -> bool:
        """Whether the choice's hoster is named."""
        return self.position(c.candidate) is not None


def _within_price(prefs: RoutingPreferences, fee_bps: int) -> Callable[[Choice], bool] | None:
    """``provider.max_price``: what the client would pay per million tokens, the fee included, within the caps."""
    top_in, top_out = prefs.max_input_price, prefs.max_output_price
    if top_in is None and top_out is None:
        return None

    def keep(c: Choice) -> bool:
        offer = c.candidate.offer
        return (top_in is None or client_price(offer.input_price, fee_bps) <= top_in) and (
            top_out is None or client_price(offer.output_price, fee_bps) <= top_out
        )

    return keep


def _constraints(
    prefs: RoutingPreferences,
    profile: RequestProfile,
    stats: NetworkStats,
    now: float,
    probing_busy: set[str],
    fee_bps: int,
) -> list[tuple[str, Callable[[Choice], bool] | None]]:
    """Each constraint with the words that name it (as the client named it) when it excludes every hoster."""

    def supports_all(c: Choice) -> bool:
        supported = c.candidate.hoster.supported_parameters
        return supported is None or profile.parameters <= set(supported)

    def available(c: Choice) -> bool:
        hoster = stats.of(c.candidate.hoster.hoster_id, now)
        if hoster.cooling(now):
            return False
        return not (hoster.probing(now) and c.candidate.hoster.hoster_id in probing_busy)

    denied, ignored = HosterRefs.of(prefs.deny_hosters), HosterRefs.of(prefs.ignore_hosters)
    wanted = set(prefs.quantizations)
    return [
        (
            f"{prefs.label('privacy_mode')} excludes every cloud hoster",
            (lambda c: not c.candidate.hoster.cloud) if prefs.privacy_mode else None,
        ),
        (
            "allow_hosters matches no eligible hoster",
            HosterRefs.of(prefs.allow_hosters).keep if prefs.allow_hosters else None,
        ),
        (
            "provider.only matches no eligible hoster",
            HosterRefs.of(prefs.only_hosters).keep if prefs.only_hosters else None,
        ),
        (
            "deny_hosters excludes every live hoster",
            (lambda c: not denied.keep(c)) if prefs.deny_hosters else None,
        ),
        (
            "provider.ignore excludes every live hoster",
            (lambda c: not ignored.keep(c)) if prefs.ignore_hosters else None,
        ),
        (
            "provider.order (with allow_fallbacks false) names no eligible hoster",
            HosterRefs.of(prefs.order_hosters).keep if prefs.order_hosters and not prefs.allow_fallbacks else None,
        ),
        (
            "provider.quantizations: no hoster declared " + " or ".join(prefs.quantizations),
            (lambda c: (c.candidate.offer.quantization or "unknown") in wanted) if wanted else None,
        ),
        (
            "provider.max_price: every hoster costs more (the platform fee included)",
            _within_price(prefs, fee_bps),
        ),
        (
            "trusted_only: no hoster has a trust score above 0.8",
            (lambda c: c.trust > TRUSTED) if prefs.trusted_only else None,
        ),
        (
            f"max_latency_ms: every hoster's observed latency is above {prefs.max_latency_ms} ms",
            (lambda c: c.ttft_ms <= prefs.max_latency_ms) if prefs.max_latency_ms else None,
        ),
        (
            f"{prefs.label('require_parameters')}: no hoster supports every parameter of this request",
            supports_all if prefs.require_parameters else None,
        ),
        ("every hoster is cooling down after repeated failures", available),
        ("every hoster is at capacity", lambda c: c.candidate.hoster.in_flight < c.candidate.hoster.capacity),
    ]


def _filter(
    choices: list[Choice], constraints: list[tuple[str, Callable[[Choice], bool] | None]]
) -> tuple[list[Choice], str | None]:
    """Apply the constraints in order; when one leaves nothing, say which (and which ones came before)."""
    applied: list[str] = []
    for reason, keep in constraints:
        if keep is None:
            continue
        remaining = [c for c in choices if keep(c)]
        if not remaining:
            return [], reason + (f" (after {', '.join(applied)})" if applied else "")
        applied.append(reason.split(" ", 1)[0].rstrip(":"))
        choices = remaining
    return choices, None


def _score(tier: RankBy, choices: list[Choice]) -> dict[int, float]:
    """Lower is better; ``balanced`` weighs price 45%, speed 45% and load 10%, price and speed relative to the
    best candidate (speeds under ``LATENCY_FLOOR_MS`` count as equal); ``throughput`` is seconds per token."""
    if tier == "cheapest":
        return {id(c): float(c.price) for c in choices}
    if tier == "fastest":
        return {id(c): c.ttft_ms for c in choices}
    if tier == "throughput":
        return {id(c): 1.0 / max(c.tokens_per_s, 1e-3) for c in choices}
    cheapest = max(1, min(c.price for c in choices))
    quickest = max(1.0, min(c.ttft_ms for c in choices))
    return {
        id(c): 0.45 * max(1, c.price) / cheapest
        + 0.45 * max(1.0, c.ttft_ms) / quickest
        + 0.10 * (1 + 4 * c.candidate.load)
        for c in choices
    }


def _rank(tier: RankBy, choices: list[Choice]) -> list[Candidate]:
    """Best first, with equal hosters sharing the load.

    ``cheapest``, ``fastest`` and ``throughput`` put every candidate within reach of the best score (exactly
    equal prices; speeds within ``NEAR_EQUAL``) first, in random order. ``balanced`` draws the whole order at random,
    each candidate weighted by ``exp(-BALANCE_SHARPNESS * (score / best - 1))``: equal hosters get equal
    shares, one 10% worse about half as much, one twice as bad almost nothing; so a hoster that measured
    slow once still gets the traffic that lets it be measured again.
    """
    if not choices:
        return []
    scores = _score(tier, choices)
    best = min(scores.values())
    if tier == "balanced":
        weights = {id(c): math.exp(-BALANCE_SHARPNESS * (scores[id(c)] / best - 1)) for c in choices}
        keyed = sorted(choices, key=lambda c: random.random() ** (1 / weights[id(c)]), reverse=True)
        return [c.candidate for c in keyed]
    bound = best if tier == "cheapest" else best * NEAR_EQUAL
    top = [c for c in choices if scores[id(c)] <= bound]
    random.shuffle(top)
    rest = sorted((c for c in choices if scores[id(c)] > bound), key=lambda c: scores[id(c)])
    return [c.candidate for c in top + rest]


def order_candidates(
    registry: HosterRegistry,
    stats: NetworkStats,
    model: str,
    prefs: RoutingPreferences,
    profile: RequestProfile,
    now: float,
    wall: float,
    retry_after: int,
    probing_busy: set[str] | None = None,
    fee_bps: int = 0,
) -> list[Candidate]:
    """Every eligible (hoster, model) for the request, in the order to try them.

    ``model`` first, then each of ``fallback_models``; ``auto`` pools every live model that fits the request
    (context length, tools, JSON mode, images) and lets the tier choose. Within each model, the hosters of
    ``order_hosters`` come first, in that order (``provider.order``). Raises ``NoEligibleHoster``: 404 when no
    model asked for was ever served on the network, 503 naming the constraint that excluded the hosters
    otherwise. ``fee_bps`` is the platform fee, which ``provider.max_price`` includes.
    """
    live = registry.live(now)
    constraints = _constraints(prefs, profile, stats, wall, probing_busy or set(), fee_bps)
    groups: list[tuple[str, list[Candidate]]]
    if model == AUTO_MODEL:
        groups = [("auto", [c for c in live if profile.fits(c.offer)])]
        groups += [(m, [c for c in live if c.offer.model == m]) for m in prefs.fallback_models]
    else:
        groups = [(m, [c for c in live if c.offer.model == m]) for m in [model, *prefs.fallback_models]]
    ordered: list[Candidate] = []
    reasons = []
    elsewhere = []  # asked-for models live only behind other endpoints
    for name, found in groups:
        pairs = [c for c in found if profile.serves(c.offer)]
        if found and not pairs:
            elsewhere.append(name)
            reasons.append(f"`{name}` does not serve {endpoint_path(profile.endpoint)}")
            continue
        if not pairs:
            reasons.append(
                f"no hoster of `{name}` is live right now"
                if name != "auto"
                else "no live model fits this request (context length, tools, JSON mode or images)"
            )
            continue
        eligible, reason = _filter(_choices(pairs, stats, profile, wall), constraints)
        if not eligible:
            reasons.append(f"`{name}`: {reason}")
        ordered += _put_first(_rank(prefs.tier, eligible), prefs)
    if ordered:
        return ordered
    if elsewhere and len(elsewhere) == len(groups):
        raise NoEligibleHoster(errors.model_not_supported(elsewhere[0], endpoint_path(profile.endpoint)))
    if model != AUTO_MODEL and not any(m in registry.models_seen for m in [model, *prefs.fallback_models]):
        raise NoEligibleHoster(errors.model_not_found(model))
    raise NoEligibleHoster(errors.no_hoster_available(reasons, retry_after))


def _put_first(ranked: list[Candidate], prefs: RoutingPreferences) -> list[Candidate]:
    """``provider.order``: the hosters it names first, in its order, then the others as ranked. With
    ``allow_fallbacks`` false and no order, only the best-ranked hoster (the constraints already kept only
    the named ones when there is an order)."""
    if not prefs.order_hosters:
        return ranked if prefs.allow_fallbacks else ranked[:1]
    order = HosterRefs.of(prefs.order_hosters)

    def position(candidate: Candidate) -> int:
        named = order.position(candidate)
        return len(prefs.order_hosters) if named is None else named

    return sorted(ranked, key=position)  # stable: ties keep their ranked order


@dataclass(frozen=True, slots=True)
class FirstByteBudget:
    """How long an attempt may wait for its first chunk (see ``first_byte_deadline_ms``)."""

    floor_ms: float
    ceiling_ms: float
    multiple: float
    ms_per_prompt_token: float


def first_byte_deadline_ms(
    budget: FirstByteBudget,
    observed_p95_ms: float | None,
    advertised_ms: float | None,
    prompt_tokens: int,
    max_latency_ms: int | None,
    peer_p95s_ms: Sequence[float] = (),
) -> float:
    """The first-byte deadline of one attempt: ``multiple`` times what the hoster has shown (its observed p95
    time to first token, else what it advertised), plus prefill time for a long prompt, never under the floor
    and never over the ceiling. A hoster that has shown nothing is held to what its measured peers on the
    model show (the slowest of their p95s: a newcomer is not assumed faster than any of them); only a model
    nobody was measured on gets the ceiling. A request's ``max_latency_ms`` caps it at twice that: the client
    said a slower answer is of no use, and twice leaves room for one slow draw."""
    expected = observed_p95_ms if observed_p95_ms is not None else advertised_ms
    if expected is None and peer_p95s_ms:
        expected = max(peer_p95s_ms)
    if expected is None:
        deadline = budget.ceiling_ms
    else:
        wanted = budget.multiple * expected + budget.ms_per_prompt_token * prompt_tokens
        deadline = min(budget.ceiling_ms, max(budget.floor_ms, wanted))
    if max_latency_ms is not None:
        deadline = min(deadline, 2.0 * max_latency_ms)
    return deadline


def prefer_healthy(queue: list[Candidate], stats: NetworkStats, now: float) -> None:
    """Reorder a request's remaining candidates, before a failover, by what the router learnt since it ranked
    them: hosters that are not cooling and did not just fail come first, those that have served recently
    before those never seen to (a request that already failed is not spent on an unknown while a proven
    hoster can take it), each group in its ranked order; the others stay in the queue, last, in case nothing
    else takes the attempt."""

    def health(candidate: Candidate) -> tuple[bool, bool, bool]:
        hoster = stats.of(candidate.hoster.hoster_id, now)
        return hoster.cooling(now), hoster.consecutive_failures > 0, "ok" not in hoster.outcomes

    queue.sort(key=health)


# The request lifecycle's rules, pure: the dispatcher applies them to the messages it hears. ------------------

# Attempts a request gets, each on a different hoster; its reservation covers the dearest of them.
MAX_ATTEMPTS = 3


def max_cost(candidates: list[Candidate], bounds: UsageBounds, fee_bps: int) -> int:
    """The most a request can cost at the dearest of ``candidates``: every token its usage bounds allow (the
    prompt's whole body, every part and tool included; the completion limit times ``n``). A charge is held to
    the same bounds, so it never exceeds this."""
    return max(
        cost_of(bounds.prompt, bounds.completion, c.offer.input_price, c.offer.output_price, fee_bps).client
        for c in candidates
    )


@dataclass(slots=True)
class InFlight:
    """A request this router dispatched and has not yet heard the end of."""

    route: RouteRequest
    queue: list[Candidate]
    candidate: Candidate
    adapter_id: str
    attempt: int
    prompt_tokens: int
    first_byte_deadline_ms: float | None
    started: float
    bounds: UsageBounds
    billed: list[BilledAttempt] = field(default_factory=list)
    # Each billed attempt's usage as its hoster reported it, for the relayed-text bound applied at the end.
    reported: dict[int, Usage] = field(default_factory=dict)
    cancelled: bool = False
    # The ingress answered the client before it heard the route (``route_timeout``): nothing is charged.
    unbilled: bool = False


def billable(event: AttemptFinished) -> bool:
    """Whether the client pays for an attempt (``attempt_billable``, billing's rule)."""
    return attempt_billable(event.outcome, event.stream, event.chunks_sent)


def can_fail_over(event: AttemptFinished, flight: InFlight) -> bool:
    """A failed attempt is retried elsewhere unless the client left, a stream already sent it something, or
    the request used its attempts."""
    return (
        event.outcome == "failed"
        and not event.client_error
        and not flight.cancelled
        and (not event.stream or event.chunks_sent == 0)
        and flight.attempt < MAX_ATTEMPTS
    )


def bill_attempt(bounds: UsageBounds, event: AttemptFinished) -> BilledAttempt:
    """The attempt as billing charges it: the hoster's reported usage held to the request's bounds, with what
    was wrong with the report (``usage_discrepancy``) when it broke them."""
    reported = event.usage
    prompt, completion, discrepancy = bounds.bound(reported.prompt_tokens, reported.completion_tokens)
    return BilledAttempt(
        attempt=event.attempt,
        hoster_id=event.hoster_id,
        usage=Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=reported.estimated,
        ),
        input_price=event.input_price,
        output_price=event.output_price,
        usage_discrepancy=discrepancy,
    )


def hold_to_text(flight: InFlight, note: RequestDelivered) -> tuple[list[BilledAttempt], str | None]:
    """The billed attempts, the one that delivered held also to the text the client received; and the hoster
    this bound caught when nothing else had (``None`` otherwise)."""
    billed = list(flight.billed)
    last = billed[-1] if billed else None
    reported = flight.reported.get(last.attempt) if last is not None else None
    if last is None or last.attempt != note.attempt or reported is None:
        return billed, None
    bounds = flight.bounds.with_text(note.text_bytes, note.choices)
    prompt, completion, discrepancy = bounds.bound(reported.prompt_tokens, reported.completion_tokens)
    if (prompt, completion) == (last.usage.prompt_tokens, last.usage.completion_tokens):
        return billed, None
    caught = last.hoster_id if last.usage_discrepancy is None else None
    why = f"{discrepancy}; {note.text_bytes} bytes of text reached the client"
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                  estimated=last.usage.estimated)  # fmt: skip
    billed[-1] = last.model_copy(update={"usage": usage, "usage_discrepancy": why})
    return billed, caught
