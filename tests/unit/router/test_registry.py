from __future__ import annotations

from collections import Counter

import pytest

from libs.contracts.hosters import HosterHeartbeat, HosterStatus, ModelOffer
from libs.contracts.routing import RoutingPreferences
from services.router.service import Candidate, HosterRegistry, NoEligibleHoster, RequestProfile, order_candidates
from services.router.stats import NetworkStats

PROFILE = RequestProfile(prompt_tokens=10, max_tokens=10)


def order(
    registry: HosterRegistry,
    model: str,
    prefs: RoutingPreferences,
    now: float = 101.0,
    stats: NetworkStats | None = None,
    profile: RequestProfile = PROFILE,
) -> list[Candidate]:
    return order_candidates(registry, stats or NetworkStats(), model, prefs, profile, now, 1_700_000_000.0, 5)


H1 = "11111111-1111-4111-8111-111111111111"
H2 = "22222222-2222-4222-8222-222222222222"
CLOUD = "33333333-3333-4333-8333-333333333333"


def status(hoster_id: str, model: str = "m", cloud: bool = False, in_flight: int = 0) -> HosterStatus:
    return HosterStatus(
        hoster_id=hoster_id,
        name=hoster_id[:4],
        cloud=cloud,
        capacity=4,
        in_flight=in_flight,
        models=[ModelOffer(model=model, upstream_model=model, input_price=1, output_price=2)],
    )


def registry_with(*hosters: HosterStatus, at: float = 100.0) -> HosterRegistry:
    registry = HosterRegistry(ttl_s=3.0)
    registry.observe(HosterHeartbeat(adapter_id="a1", interval_s=1, hosters=list(hosters)), at, 1700000000)
    return registry


def test_a_hoster_that_stops_heartbeating_is_gone_after_the_ttl() -> None:
    registry = registry_with(status(H1))
    assert [c.hoster.hoster_id for c in registry.live(102.9)] == [H1]
    assert registry.live(103.1) == []
    assert registry.adapter_alive("a1", 102.0)
    assert not registry.adapter_alive("a1", 103.5)


def test_never_served_model_is_404_and_served_before_but_gone_is_503() -> None:
    registry = registry_with(status(H1, model="m"))
    with pytest.raises(NoEligibleHoster) as never:
        order(registry, "other", RoutingPreferences())
    assert never.value.report.http_status == 404
    assert never.value.report.code == "model_not_found"
    with pytest.raises(NoEligibleHoster) as gone:
        order(registry, "m", RoutingPreferences(), now=200.0)
    assert gone.value.report.http_status == 503
    assert gone.value.report.retry_after == 5


def test_privacy_mode_never_picks_a_cloud_hoster_and_says_why_when_only_cloud_is_left() -> None:
    registry = registry_with(status(CLOUD, cloud=True), status(H1))
    for _ in range(20):
        candidates = order(registry, "m", RoutingPreferences(privacy_mode=True))
        assert [c.hoster.hoster_id for c in candidates] == [H1]
    only_cloud = registry_with(status(CLOUD, cloud=True))
    with pytest.raises(NoEligibleHoster) as info:
        order(only_cloud, "m", RoutingPreferences(privacy_mode=True))
    assert "privacy_mode" in info.value.report.message


def test_allow_and_deny_lists_filter_hosters() -> None:
    registry = registry_with(status(H1), status(H2))
    allowed = order(registry, "m", RoutingPreferences(allow_hosters=[H2]))
    assert [c.hoster.hoster_id for c in allowed] == [H2]
    remaining = order(registry, "m", RoutingPreferences(deny_hosters=[H2]))
    assert [c.hoster.hoster_id for c in remaining] == [H1]


def test_fallback_model_is_used_when_the_main_model_has_no_live_hoster() -> None:
    registry = registry_with(status(H1, model="small"))
    registry.models_seen["big"] = 1
    candidates = order(registry, "big", RoutingPreferences(fallback_models=["small"]))
    assert candidates[0].offer.model == "small"
    assert candidates[0].hoster.hoster_id == H1


def test_balanced_prefers_the_less_loaded_and_equal_hosters_share_first_place() -> None:
    busy = registry_with(status(H1, in_flight=3), status(H2, in_flight=0))
    busy_firsts = Counter(order(busy, "m", RoutingPreferences())[0].hoster.hoster_id for _ in range(400))
    assert busy_firsts[H2] > 300  # a 30% worse score gets about an eighth of the traffic
    assert busy_firsts[H1] > 10
    equal = registry_with(status(H1), status(H2))
    firsts = Counter(order(equal, "m", RoutingPreferences())[0].hoster.hoster_id for _ in range(200))
    assert firsts[H1] > 50
    assert firsts[H2] > 50


def test_hosters_at_capacity_are_not_eligible() -> None:
    registry = registry_with(status(H1, in_flight=4))
    with pytest.raises(NoEligibleHoster) as info:
        order(registry, "m", RoutingPreferences())
    assert "capacity" in info.value.report.message


def test_live_models_summarise_hosters_and_prices() -> None:
    cheap = status(H1)
    dear = HosterStatus(
        hoster_id=H2,
        name="h2",
        cloud=True,
        capacity=1,
        in_flight=0,
        models=[ModelOffer(model="m", upstream_model="x", input_price=5, output_price=9, context_length=4096)],
    )
    [model] = registry_with(cheap, dear).live_models(101.0)
    assert (model.id, model.hosters) == ("m", 2)
    assert (model.min_input_price, model.max_input_price) == (1, 5)
    assert (model.min_output_price, model.max_output_price) == (2, 9)
    assert model.context_length == 4096


def test_times_to_first_token_under_the_latency_floor_do_not_tell_hosters_apart() -> None:
    """3 ms against 9 ms is a busy machine's jitter, not speed: balanced and fastest share the load (a CI run
    sent 84 of 100 to one of two equal hosters before the floor applied)."""
    stats = NetworkStats()
    for hoster_id, ttft_ms in ((H1, 3.0), (H2, 9.0)):
        for _ in range(10):
            stats.observe(
                hoster_id, 100.0, model="m", outcome="succeeded", chunks_sent=4, ttft_ms=ttft_ms,
                completion_tokens=4, duration_ms=20, client_error=False,
            )  # fmt: skip
    equal = registry_with(status(H1), status(H2))
    for tier in ("balanced", "fastest"):
        prefs = RoutingPreferences(tier=tier)
        firsts = Counter(order(equal, "m", prefs, stats=stats)[0].hoster.hoster_id for _ in range(400))
        assert min(firsts[H1], firsts[H2]) > 150, (tier, firsts)


def test_a_hoster_measured_implausibly_fast_is_ranked_as_slow_until_it_is_plausible_again() -> None:
    """Its instant answers would win ``fastest`` and ``throughput``; instead it is ranked as the slowest there
    may be, and the count of implausible attempts is on its record."""
    stats = NetworkStats()

    def seen(hoster_id: str, ttft_ms: float, tokens_per_s: float | None, implausible: bool = False) -> None:
        stats.observe(
            hoster_id, 100.0, model="m", outcome="succeeded", chunks_sent=4, ttft_ms=ttft_ms, completion_tokens=64,
            duration_ms=20, tokens_per_s=tokens_per_s, implausible_speed=implausible,
        )  # fmt: skip

    for _ in range(10):
        seen(H1, 200.0, 40.0)
        seen(H2, 5.0, 4000.0)
    seen(H2, 0.5, None, implausible=True)
    equal = registry_with(status(H1), status(H2))
    for tier in ("fastest", "throughput"):
        firsts = Counter(order(equal, "m", RoutingPreferences(tier=tier), stats=stats)[0].hoster.hoster_id
                         for _ in range(50))  # fmt: skip
        assert firsts == {H1: 50}, tier
    assert stats.of(H2, 100.0).implausible_speeds == 1
    assert stats.of(H2, 100.0).speed["m"].ttft_samples.count(0.5) == 0  # its timing is not believed
    for _ in range(20):  # SUSPICION_WINDOW plausible attempts later, its speed counts again
        seen(H2, 5.0, 4000.0)
    assert order(equal, "m", RoutingPreferences(tier="fastest"), stats=stats)[0].hoster.hoster_id == H2
