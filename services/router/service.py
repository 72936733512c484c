"""The router's domain: the registry of live hosters and the choice of one for a request. No I/O here."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from libs.contracts.common import ErrorReport
from libs.contracts.hosters import HosterHeartbeat, HosterStatus, LiveModel, ModelOffer
from libs.contracts.routing import RoutingPreferences

AUTO_MODEL = "auto"


@dataclass(slots=True, frozen=True)
class Candidate:
    """One hoster able to serve one model, as the router would dispatch to it."""

    hoster: HosterStatus
    offer: ModelOffer
    adapter_id: str

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
    """Live hosters fed by adapter heartbeats, and every model the network ever served."""

    ttl_s: float
    _hosters: dict[str, _Seen] = field(default_factory=dict)
    _adapters: dict[str, float] = field(default_factory=dict)
    models_seen: dict[str, int] = field(default_factory=dict)

    def observe(self, heartbeat: HosterHeartbeat, now: float, wall: int) -> list[str]:
        """Record a heartbeat at monotonic ``now``; return models never seen before (to be persisted)."""
        self._adapters[heartbeat.adapter_id] = now
        new_models = []
        for status in heartbeat.hosters:
            self._hosters[status.hoster_id] = _Seen(status, heartbeat.adapter_id, now)
            for offer in status.models:
                if offer.model not in self.models_seen:
                    self.models_seen[offer.model] = wall
                    new_models.append(offer.model)
        return new_models

    def adapter_alive(self, adapter_id: str, now: float) -> bool:
        """Whether ``adapter_id`` heartbeated within the TTL."""
        seen = self._adapters.get(adapter_id)
        return seen is not None and now - seen <= self.ttl_s

    def forget_expired(self, now: float) -> None:
        """Drop hosters and adapters whose heartbeats stopped."""
        for hoster_id in [h for h, s in self._hosters.items() if now - s.at > self.ttl_s]:
            del self._hosters[hoster_id]
        for adapter_id in [a for a, at in self._adapters.items() if now - at > self.ttl_s]:
            del self._adapters[adapter_id]

    def live(self, now: float) -> list[Candidate]:
        """Every (hoster, model) pair alive now."""
        return [
            Candidate(seen.status, offer, seen.adapter_id)
            for seen in self._hosters.values()
            if now - seen.at <= self.ttl_s
            for offer in seen.status.models
        ]

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
                )
            )
        return listing


class NoEligibleHoster(Exception):
    """No hoster can take the request; ``report`` says why, for the client."""

    def __init__(self, report: ErrorReport) -> None:
        super().__init__(report.message)
        self.report = report


def _eligible(candidates: list[Candidate], prefs: RoutingPreferences) -> tuple[list[Candidate], str | None]:
    """Apply the client's constraints; also name the first constraint that emptied the list."""
    steps: list[tuple[str, Callable[[Candidate], bool] | None]] = [
        (
            "privacy_mode excludes cloud hosters",
            (lambda c: not c.hoster.cloud) if prefs.privacy_mode else None,
        ),
        (
            "allow_hosters matches no live hoster",
            (lambda c: c.hoster.hoster_id in prefs.allow_hosters) if prefs.allow_hosters else None,
        ),
        (
            "deny_hosters excludes every live hoster",
            (lambda c: c.hoster.hoster_id not in prefs.deny_hosters) if prefs.deny_hosters else None,
        ),
        ("every live hoster is at capacity", lambda c: c.hoster.in_flight < c.hoster.capacity),
    ]
    for reason, keep in steps:
        if keep is None:
            continue
        remaining = [c for c in candidates if keep(c)]
        if not remaining:
            return [], reason
        candidates = remaining
    return candidates, None


def order_candidates(
    registry: HosterRegistry, model: str, prefs: RoutingPreferences, now: float, retry_after: int
) -> tuple[str, list[Candidate]]:
    """The model to serve and its eligible hosters, best first.

    Tries ``model`` then each of ``fallback_models``; raises ``NoEligibleHoster`` with a 404 when no model
    was ever served on the network, a 503 naming the constraint when none is eligible now.
    """
    live = registry.live(now)
    wanted = [model, *prefs.fallback_models]
    if model == AUTO_MODEL:
        counts: dict[str, int] = {}
        for c in live:
            counts[c.offer.model] = counts.get(c.offer.model, 0) + 1
        wanted = sorted(counts, key=lambda m: (-counts[m], m)) + prefs.fallback_models
    reasons = []
    for name in wanted:
        pairs = [c for c in live if c.offer.model == name]
        if not pairs:
            reasons.append(f"no hoster of `{name}` is live right now")
            continue
        eligible, reason = _eligible(pairs, prefs)
        if eligible:
            random.shuffle(eligible)  # equal hosters share the load
            eligible.sort(key=lambda c: c.load)
            return name, eligible
        reasons.append(f"`{name}`: {reason}")
    if model != AUTO_MODEL and not any(m in registry.models_seen for m in [model, *prefs.fallback_models]):
        raise NoEligibleHoster(
            ErrorReport(
                http_status=404,
                type="invalid_request_error",
                code="model_not_found",
                param="model",
                message=f"The model `{model}` does not exist on this network.",
            )
        )
    raise NoEligibleHoster(
        ErrorReport(
            http_status=503,
            type="server_error",
            code="no_hoster_available",
            message="No hoster can serve this request right now: " + "; ".join(reasons or ["no live hoster"]),
            retry_after=retry_after,
        )
    )
