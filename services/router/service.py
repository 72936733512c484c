"""The router's domain: the registry of live hosters, the choice of one for a request, and the rules of a
request's lifecycle (what it reserves, when it fails over, what each attempt is billed). No I/O here."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from libs.contracts import errors
from libs.contracts.billing import BilledAttempt, DispatchRecord
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
    breaks_bound,
    client_price,
    cost_of,
    estimate_prompt_tokens,
    held_to_count,
    requested_max_tokens,
)
from libs.contracts.routing import (
    AttemptFinished,
    AttemptObserved,
    AttemptOutcome,
    RankBy,
    RequestDelivered,
    RouteRequest,
    RoutingPreferences,
)
from libs.contracts.verification import VerdictName
from services.router.stats import TRUSTED, NetworkStats
from services.router.verification import FAILED, UNCHECKED, VERIFIED, Verifications

AUTO_MODEL = "auto"
# Every model the network ever served is remembered (in memory and in the router's bucket, for ever), so
# that a model with no live hoster now is a 503, not a 404. Hosters name those models, so how many are
# remembered is bounded: each hoster may introduce this many, the network this many in all. Past either, a
# new name is still routed while it is live, but not remembered (the router logs it).
MODELS_INTRODUCED_PER_HOSTER = 256
MAX_MODELS_SEEN = 10_000


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
    # How many of ``models_seen`` each hoster introduced; the hosters a name was refused of (see
    # ``MODELS_INTRODUCED_PER_HOSTER``), and those of them not yet told by ``take_unremembered``.
    _introduced: dict[str, int] = field(default_factory=dict)
    _capped: set[str] = field(default_factory=set)
    _unremembered: list[tuple[str, str]] = field(default_factory=list)

    def remember(self, model: str, first_seen: int, hoster_id: str) -> bool:
        """Remember ``model`` as served since ``first_seen``, introduced by ``hoster_id`` (``""``: unknown, as
        in records stored before introducers were), unless that hoster or the network has introduced as many
        as it may; whether it was remembered."""
        if model in self.models_seen:
            return True
        introduced = self._introduced.get(hoster_id, 0)
        if (hoster_id and introduced >= MODELS_INTRODUCED_PER_HOSTER) or len(self.models_seen) >= MAX_MODELS_SEEN:
            return False
        self.models_seen[model] = first_seen
        self._introduced[hoster_id] = introduced + 1
        return True

    def take_unremembered(self) -> list[tuple[str, str]]:
        """Each hoster a new model name was refused of for the first time since the router started, with
        that name (one log line per hoster, however many names it keeps announcing)."""
        names, self._unremembered = self._unremembered, []
        return names

    def observe(self, heartbeat: HosterHeartbeat, now: float, wall: int) -> list[str]:
        """Record a heartbeat at monotonic ``now``; return models never seen before (to be persisted; see
        ``remember`` for those that are not)."""
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
                if offer.model in self.models_seen:
                    continue
                if self.remember(offer.model, wall, status.hoster_id):
                    new_models.append(offer.model)
                elif status.hoster_id not in self._capped:
                    self._capped.add(status.hoster_id)
                    self._unremembered.append((status.hoster_id, offer.model))
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
# The fewest completion tokens whose delivery is timed for speed, and the shortest time believed for them.
MIN_SPEED_TOKENS = 8
MIN_GENERATION_MS = 1.0


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
    and so get measured. A hoster lately measured past the model's plausibility bound (``speed_of``) is
    ranked below the slowest there may be: twice the time to first token of the slowest measured (or of
    ``UNKNOWN_TTFT_MS``), half the tokens per second (of ``UNKNOWN_TPS``)."""
    measured: list[tuple[Candidate, float | None, float | None, bool]] = []
    for candidate in candidates:
        hoster = stats.of(candidate.hoster.hoster_id, now)
        hoster.advertised_ttft_ms = candidate.hoster.advertised_ttft_ms
        speed = hoster.speed.get(candidate.offer.model)
        if speed is None:
            measured.append((candidate, None, None, False))
        else:
            measured.append((candidate, speed.expected_ttft_ms, speed.tps_ewma, speed.suspicious))
    typical_ttft = _median([t for _, t, _, odd in measured if t is not None and not odd], UNKNOWN_TTFT_MS)
    typical_tps = _median([r for _, _, r, odd in measured if r is not None and not odd], UNKNOWN_TPS)
    slowest_ttft = max([UNKNOWN_TTFT_MS, *(t for _, t, _, odd in measured if t is not None and not odd)])
    slowest_tps = min([UNKNOWN_TPS, *(r for _, _, r, odd in measured if r is not None and not odd)])
    choices = []
    for candidate, ttft, tps, suspicious in measured:
        expected_ttft = ttft if ttft is not None else (candidate.hoster.advertised_ttft_ms or typical_ttft)
        expected_tps = tps if tps is not None else typical_tps
        if suspicious:
            expected_ttft, expected_tps = 2 * max(expected_ttft, slowest_ttft), min(expected_tps, slowest_tps) / 2
        choices.append(
            Choice(
                candidate,
                profile.prompt_tokens * candidate.offer.input_price + profile.max_tokens * candidate.offer.output_price,
                expected_ttft,
                stats.of(candidate.hoster.hoster_id, now).trust(now),
                expected_tps,
            )
        )
    return choices


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
    verifications: Verifications,
) -> list[tuple[str, Callable[[Choice], bool] | None]]:
    """Each constraint with the words that name it (as the client named it) when it excludes every hoster."""

    def trusted(c: Choice) -> bool:
        # Trusted: a trust score above TRUSTED, and verified by its spot checks where the model has a reference.
        model, hoster_id = c.candidate.offer.model, c.candidate.hoster.hoster_id
        if not verifications.has_reference(model):
            return c.trust > TRUSTED
        return c.trust > TRUSTED and verifications.of(hoster_id, model, now) == VERIFIED

    def declared_quantization(c: Choice) -> str:
        # A quantization its spot checks failed is not believed.
        model, hoster_id = c.candidate.offer.model, c.candidate.hoster.hoster_id
        if verifications.of(hoster_id, model, now) == FAILED:
            return "unknown"
        return c.candidate.offer.quantization or "unknown"

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
            (lambda c: declared_quantization(c) in wanted) if wanted else None,
        ),
        (
            "provider.max_price: every hoster costs more (the platform fee included)",
            _within_price(prefs, fee_bps),
        ),
        (
            "trusted_only: no hoster has a trust score above 0.8 (and is verified, where the model has a reference)",
            trusted if prefs.trusted_only else None,
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
        return {id(c): max(LATENCY_FLOOR_MS, c.ttft_ms) for c in choices}
    if tier == "throughput":
        return {id(c): 1.0 / max(c.tokens_per_s, 1e-3) for c in choices}
    cheapest = max(1, min(c.price for c in choices))
    quickest = max(LATENCY_FLOOR_MS, min(c.ttft_ms for c in choices))
    return {
        id(c): 0.45 * max(1, c.price) / cheapest
        + 0.45 * max(LATENCY_FLOOR_MS, c.ttft_ms) / quickest
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
    verifications: Verifications | None = None,
) -> list[Candidate]:
    """Every eligible (hoster, model) for the request, in the order to try them.

    ``model`` first, then each of ``fallback_models``; ``auto`` pools every live model that fits the request
    (context length, tools, JSON mode, images) and lets the tier choose. Within each model, the hosters of
    ``order_hosters`` come first, in that order (``provider.order``). Raises ``NoEligibleHoster``: 404 when no
    model asked for was ever served on the network, 503 naming the constraint that excluded the hosters
    otherwise. ``fee_bps`` is the platform fee, which ``provider.max_price`` includes.
    """
    live = registry.live(now)
    constraints = _constraints(prefs, profile, stats, wall, probing_busy or set(), fee_bps,
                               verifications or Verifications())  # fmt: skip
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
class Run:
    """One attempt the router dispatched and a hoster took: the network's own record of it. ``report`` is the
    hoster's claim about it (``None`` until it came); ``outcome`` the router's verdict once it is over."""

    attempt: int
    candidate: Candidate
    adapter_id: str
    reply_subject: str
    started: float
    first_byte_deadline_ms: float | None
    report: AttemptFinished | None = None
    outcome: AttemptOutcome | None = None
    error: str | None = None
    client_error: bool = False
    ended: float | None = None
    # The ingress said it received nothing of this attempt by its first-byte deadline: whatever the hoster
    # claims it sent, the client has nothing of it.
    silent: bool = False

    @property
    def hoster_id(self) -> str:
        return self.candidate.hoster.hoster_id

    def end(self, outcome: AttemptOutcome, now: float, error: str | None = None, client_error: bool = False) -> None:
        """The router's verdict on the attempt (the first one stands)."""
        if self.outcome is None:
            self.outcome, self.error, self.client_error, self.ended = outcome, error, client_error, now


@dataclass(slots=True)
class InFlight:
    """A request this router admitted and has not settled: its attempts (``runs``, the serving one last), the
    offers made so far (each a new attempt number), and the ingress's word on what reached the client."""

    route: RouteRequest
    queue: list[Candidate]
    prompt_tokens: int
    bounds: UsageBounds
    runs: list[Run]
    offers: int
    cancelled: bool = False
    # The ingress answered the client before it heard the route (``route_timeout``): nothing is charged.
    unbilled: bool = False
    # No attempt follows: the request ends once the ingress's note (or the wait for it) and the serving
    # attempt's report (or the wait for it) are in.
    over: bool = False
    note: RequestDelivered | None = None
    # The prompt's tokens as counted with the model's registered tokenizer (``None``: not registered).
    counted_prompt: int | None = None
    # Settled: nothing more of it moves (a hoster taking it late is told to stop).
    settled: bool = False

    @property
    def current(self) -> Run:
        return self.runs[-1]

    @property
    def attempt(self) -> int:
        return self.runs[-1].attempt

    @property
    def candidate(self) -> Candidate:
        return self.runs[-1].candidate

    @property
    def adapter_id(self) -> str:
        return self.runs[-1].adapter_id

    @property
    def started(self) -> float:
        return self.runs[0].started


# What a hoster's own report of ``cancelled`` is when the network cancelled nothing: its failure.
UNASKED_CANCEL = "the hoster cancelled an attempt the network did not"


def claimed_outcome(event: AttemptFinished, flight: InFlight) -> tuple[AttemptOutcome, str | None]:
    """The outcome a hoster's report claims, as the router takes it: ``cancelled`` only when the network
    cancelled (the client left), else it is the hoster's failure."""
    if event.outcome == "cancelled" and not flight.cancelled:
        return "failed", UNASKED_CANCEL
    return event.outcome, event.error


def can_fail_over(flight: InFlight) -> bool:
    """A failed attempt is retried elsewhere unless the client left, the failure was the client's own, a
    stream may already have sent it something (the hoster says so and the ingress did not say otherwise, or
    the ingress's note came), or the request used its attempts."""
    run = flight.current
    report = run.report
    sent = not run.silent and report is not None and report.stream and report.chunks_sent > 0
    return (
        run.outcome == "failed"
        and not run.client_error
        and not flight.cancelled
        and not flight.over
        and not sent
        and len(flight.runs) < MAX_ATTEMPTS
    )


def delivery_due(run: Run, now: float, wait_s: float) -> float:
    """When the router stops waiting for the ingress's note once the serving attempt reported its end:
    ``wait_s`` after the later of now and the attempt's first-byte deadline, so an ingress that got nothing
    has told the router first (and the request fails over instead of ending as a hoster's claimed success)."""
    deadline = run.started + (run.first_byte_deadline_ms or 0.0) / 1000
    return max(now, deadline) + wait_s


def delivered_frames(run: Run, note: RequestDelivered | None) -> int:
    """The frames of content the client received from ``run`` (the ingress's count)."""
    return note.frames if note is not None and note.attempt == run.attempt else 0


def charge(
    run: Run, bounds: UsageBounds, note: RequestDelivered | None, counted_prompt: int | None = None
) -> BilledAttempt | None:
    """The one rule for what a client pays for an attempt: only for what it received, on the network's own
    records. Nothing unless the ingress's note says content of this attempt reached the client and the hoster
    claimed usage; then the claim held to the request's bounds and to the text received (a token is at least
    a byte, plus one end token per choice), at the prices of the dispatch. For a registered model, the lower
    of the claim and the network's own count (``counted_prompt``, the router's; the note's completion count,
    the ingress's: ``held_to_count``), and the attempt says its usage was counted only when both counts were
    there (else it is "not verified"). A claim past a bound (unless our count is past it too:
    ``breaks_bound``) or past a count, or a report naming other prices, is a discrepancy (billed at the bound,
    the count and the dispatch's prices)."""
    report = run.report
    if report is None or note is None or delivered_frames(run, note) == 0:
        return None
    offer = run.candidate.offer
    held = bounds.with_text(note.text_bytes, note.choices)
    claimed = report.usage
    prompt, completion, why = held.bound(claimed.prompt_tokens, claimed.completion_tokens)
    if why is not None and not (
        breaks_bound(claimed.prompt_tokens, held.prompt, counted_prompt, claimed.estimated)
        or breaks_bound(claimed.completion_tokens, held.completion, note.completion_tokens, claimed.estimated)
    ):
        why = None
    prompt, over_prompt = held_to_count(prompt, counted_prompt, claimed.estimated)
    completion, over_completion = held_to_count(completion, note.completion_tokens, claimed.estimated)
    prompt, completion = min(prompt, held.prompt), min(completion, held.completion)
    if over_prompt or over_completion:
        counted = (
            f"reported {claimed.prompt_tokens} prompt and {claimed.completion_tokens} completion tokens; the "
            f"network counted {counted_prompt} and {note.completion_tokens}"
        )
        why = counted if why is None else f"{why}; {counted}"
    if (report.input_price, report.output_price) != (offer.input_price, offer.output_price):
        priced = (
            f"reported prices {report.input_price}/{report.output_price}; billed at the dispatch's "
            f"{offer.input_price}/{offer.output_price}"
        )
        why = priced if why is None else f"{why}; {priced}"
    if why is not None and held.completion < bounds.completion and completion < report.usage.completion_tokens:
        why += f" ({note.text_bytes} bytes of text reached the client)"
    return BilledAttempt(
        attempt=run.attempt,
        hoster_id=run.hoster_id,
        usage=Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=claimed.estimated and counted_prompt is None,
        ),
        input_price=offer.input_price,
        output_price=offer.output_price,
        usage_discrepancy=why,
        usage_counted=counted_prompt is not None and note.completion_tokens is not None,
    )


def verdict(run: Run, note: RequestDelivered | None, now: float) -> tuple[AttemptOutcome, str | None, bool]:
    """The router's final word on an attempt when its request settles: its verdict, else the hoster's claim;
    a hoster that never reported failed, and a success the client received nothing of (the ingress's note
    says so) is a failure."""
    if run.outcome is not None:
        outcome, error, client_error = run.outcome, run.error, run.client_error
    elif run.report is None:
        outcome, error, client_error = "failed", "the hoster never reported the attempt's end", False
    else:
        outcome, error, client_error = run.report.outcome, run.report.error, run.report.client_error
    if outcome == "succeeded" and note is not None and delivered_frames(run, note) == 0:
        outcome, error = "failed", "reported a success the client received nothing of"
    return outcome, error, client_error


def speed_of(tokens: int, ttft_ms: float | None, last_ms: float | None, bound: float) -> tuple[float | None, bool]:
    """The tokens per second of an attempt that delivered ``tokens`` (the network's count) with its first
    content at ``ttft_ms`` and its last at ``last_ms`` on the ingress's clock, held to ``bound`` (the model's
    plausibility bound), and whether it was past the bound.

    The bound is checked on the slowest reading there is: the tokens over the whole time to the last content,
    which neither the network's batching of frames nor a hoster's early first frame makes faster than the
    hoster really was; past it, the attempt's timing says nothing believable. Within it, the speed ranked on is
    the generation's (first content to last; a whole answer's is the whole time), at most the bound. Answers
    under ``MIN_SPEED_TOKENS`` are not measured: their time is mostly the network's."""
    if tokens < MIN_SPEED_TOKENS or ttft_ms is None or last_ms is None:
        return None, False
    if tokens * 1000 / max(last_ms, MIN_GENERATION_MS) > bound:
        return None, True
    generating_ms = last_ms - ttft_ms if last_ms > ttft_ms else last_ms
    return min(tokens * 1000 / max(generating_ms, MIN_GENERATION_MS), bound), False


def record_of(
    run: Run,
    route: RouteRequest,
    note: RequestDelivered | None,
    billed: BilledAttempt | None,
    now: float,
    wall: float,
    max_tokens_per_s: float,
    verification: VerdictName = UNCHECKED,
) -> tuple[DispatchRecord, AttemptObserved]:
    """The network's record of one attempt for billing, and the observation every router's stats fold: the
    router's verdict and clock, the ingress's count and times of first and last content, the tokens billed
    (``charge``), the hoster's claim beside, the speed measured (``speed_of``, bound by
    ``max_tokens_per_s``). A whole answer's time to first token is the time to it on the ingress's clock: the
    hoster's own figure is not believed."""
    outcome, error, client_error = verdict(run, note, now)
    report = run.report
    ended = run.ended if run.ended is not None else now
    duration_ms = max(0.0, (ended - run.started) * 1000)
    frames = delivered_frames(run, note)
    ttft_ms = note.ttft_ms if note is not None and frames and note.ttft_ms is not None else None
    if ttft_ms is not None:
        ttft_ms = min(ttft_ms, duration_ms)
    last_ms = note.last_content_ms if note is not None and frames else None
    tokens = billed.usage.completion_tokens if billed is not None else 0
    tokens_per_s, implausible = speed_of(tokens, ttft_ms, last_ms, max_tokens_per_s)
    claimed = report.usage if report is not None else Usage()
    offer = run.candidate.offer
    record = DispatchRecord(
        attempt=run.attempt,
        hoster_id=run.hoster_id,
        adapter_id=run.adapter_id,
        model=offer.model,
        stream=route.stream,
        outcome=outcome,
        prompt_tokens=min(max(claimed.prompt_tokens, 0), MAX_RECORDED),
        completion_tokens=min(max(claimed.completion_tokens, 0), MAX_RECORDED),
        usage_estimated=claimed.estimated,
        input_price=offer.input_price,
        output_price=offer.output_price,
        chunks_sent=frames,
        finish_reason=report.finish_reason if report is not None else None,
        error=error,
        ttft_ms=ttft_ms,
        duration_ms=duration_ms,
        finished_at=wall - (now - ended),
        dropped_parameters=report.dropped_parameters if report is not None else [],
        verification=verification,
    )
    observed = AttemptObserved(
        hoster_id=run.hoster_id,
        model=offer.model,
        outcome=outcome,
        chunks_sent=frames,
        ttft_ms=ttft_ms,
        completion_tokens=tokens,
        duration_ms=duration_ms,
        client_error=client_error,
        discrepancy=billed is not None and billed.usage_discrepancy is not None,
        tokens_per_s=tokens_per_s,
        implausible_speed=implausible,
    )
    return record, observed


# The largest count a record holds (an integer column).
MAX_RECORDED = 2**31 - 1
