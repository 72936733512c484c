"""What the router tells the console about one hoster: its live status, models and prices, speed per model and
trust with each of its terms. Pure reading of the registry and the stats; nothing here changes a score."""

from __future__ import annotations

from libs.contracts.hosters import ModelOffer
from libs.contracts.management import HosterDetail, ModelSpeed
from libs.contracts.verification import ModelVerification
from services.router.service import HosterRegistry
from services.router.stats import HosterStats, NetworkStats
from services.router.verification import Verifications


def reference_quantizations(
    registry: HosterRegistry, verifications: Verifications, model: str, now: float
) -> frozenset[str]:
    """The quantizations the live reference hosters of ``model`` declare for it."""
    return frozenset(
        c.offer.quantization
        for c in registry.live(now)
        if c.offer.model == model and c.offer.quantization and verifications.is_reference(c.hoster.hoster_id, model)
    )


def model_verifications(
    hoster_id: str,
    offers: list[ModelOffer],
    registry: HosterRegistry,
    verifications: Verifications,
    now: float,
    wall: float,
) -> list[ModelVerification]:
    """The hoster's verdict on each model it offers, with the evidence, and whether the quantization it
    declares was borne out by a reference declaring the same."""
    return [
        verifications.report(
            hoster_id, o.model, wall, o.quantization, reference_quantizations(registry, verifications, o.model, now)
        )
        for o in offers
    ]


def hoster_detail(
    hoster_id: str,
    registry: HosterRegistry,
    stats: NetworkStats,
    now: float,
    wall: float,
    verifications: Verifications | None = None,
) -> HosterDetail | None:
    """Hoster ``hoster_id`` as this router sees it at monotonic ``now`` (wall time ``wall``); ``None`` when it
    never heard of it (not live, no stats, not registered)."""
    status = next((s for s, _ in registry.statuses(now) if s.hoster_id == hoster_id), None)
    registered = registry.registrations.get(hoster_id)
    observed = stats.hosters.get(hoster_id)
    if status is None and registered is None and observed is None:
        return None
    hoster = HosterStats(first_seen=wall) if observed is None else observed  # never seen: a newcomer's terms
    terms = hoster.trust_terms(wall)
    return HosterDetail(
        hoster_id=hoster_id,
        name=status.name if status else (registered.name if registered else ""),
        live=status is not None,
        cloud=status.cloud if status else bool(registered and registered.cloud),
        region=status.region if status else (registered.region if registered else None),
        capacity=status.capacity if status else None,
        in_flight=status.in_flight if status else None,
        cooling=hoster.cooling(wall),
        models=list(status.models) if status else [],
        speed=[
            ModelSpeed(
                model=model,
                ttft_median_ms=speed.expected_ttft_ms,
                ttft_p95_ms=speed.ttft_p95_ms,
                tokens_per_s=speed.tps_ewma,
                samples=len(speed.ttft_samples),
                implausible_speeds=speed.implausible,
                suspicious=speed.suspicious,
            )
            for model, speed in sorted(hoster.speed.items())
        ],
        trust=terms.model_copy(update={"score": round(terms.score, 4)}),
        attempts=hoster.lifetime,
        usage_discrepancies=hoster.discrepancies,
        implausible_speeds=hoster.implausible_speeds,
        verifications=model_verifications(
            hoster_id, list(status.models) if status else [], registry, verifications or Verifications(), now, wall
        ),
    )
