from __future__ import annotations

from collections import Counter

import pytest

from libs.contracts.hosters import HosterHeartbeat, HosterStatus, ModelOffer
from libs.contracts.routing import RoutingPreferences
from libs.contracts.verification import CheckEvidence
from services.router.service import (
    Candidate,
    HosterRegistry,
    NoEligibleHoster,
    RequestProfile,
    order_candidates,
)
from services.router.stats import COOLDOWN_BASE_S, HosterStats, NetworkStats
from services.router.verification import Verifications

CHEAP, FAST, CLOUD = (f"11111111-1111-4111-8111-11111111111{i}" for i in range(3))
WALL = 1_700_000_000.0
PROFILE = RequestProfile(prompt_tokens=100, max_tokens=100)


def hoster(hoster_id: str, price: int, model: str = "m", cloud: bool = False, **offer: object) -> HosterStatus:
    return HosterStatus(
        hoster_id=hoster_id,
        name=hoster_id[-1],
        cloud=cloud,
        capacity=8,
        in_flight=0,
        models=[ModelOffer(model=model, upstream_model=model, input_price=price, output_price=price, **offer)],
    )


def registry(*hosters: HosterStatus) -> HosterRegistry:
    reg = HosterRegistry(ttl_s=3.0)
    reg.observe(HosterHeartbeat(adapter_id="a", interval_s=1, hosters=list(hosters)), 100.0, 1)
    return reg


def order(
    reg: HosterRegistry,
    prefs: RoutingPreferences,
    stats: NetworkStats,
    model: str = "m",
    profile: RequestProfile = PROFILE,
) -> list[Candidate]:
    return order_candidates(reg, stats, model, prefs, profile, 101.0, WALL, 5)


def succeed(stats: NetworkStats, hoster_id: str, times: int, ttft_ms: float = 100.0, model: str = "m") -> None:
    for _ in range(times):
        stats.observe(
            hoster_id,
            WALL,
            model=model,
            outcome="succeeded",
            chunks_sent=5,
            ttft_ms=ttft_ms,
            completion_tokens=20,
            duration_ms=ttft_ms + 200,
        )


def fail(stats: NetworkStats, hoster_id: str, times: int, chunks_sent: int = 0) -> None:
    for _ in range(times):
        stats.observe(
            hoster_id,
            WALL,
            model="m",
            outcome="failed",
            chunks_sent=chunks_sent,
            ttft_ms=None,
            completion_tokens=0,
            duration_ms=10,
        )


def test_cheapest_always_picks_the_lowest_price_and_fastest_the_lowest_latency() -> None:
    stats = NetworkStats()
    succeed(stats, CHEAP, 5, ttft_ms=900)
    succeed(stats, FAST, 5, ttft_ms=50)
    reg = registry(hoster(CHEAP, 1), hoster(FAST, 9))
    for _ in range(50):
        assert order(reg, RoutingPreferences(tier="cheapest"), stats)[0].hoster.hoster_id == CHEAP
        assert order(reg, RoutingPreferences(tier="fastest"), stats)[0].hoster.hoster_id == FAST


def test_balanced_spreads_over_equal_hosters() -> None:
    stats = NetworkStats()
    a, b = CHEAP, FAST
    succeed(stats, a, 5, ttft_ms=100)
    succeed(stats, b, 5, ttft_ms=104)
    reg = registry(hoster(a, 5), hoster(b, 5))
    firsts = Counter(order(reg, RoutingPreferences(), stats)[0].hoster.hoster_id for _ in range(400))
    assert min(firsts.values()) > 120


def test_a_new_hoster_is_not_trusted_and_earns_trust_with_clean_history() -> None:
    stats = NetworkStats()
    reg = registry(hoster(CHEAP, 1))
    assert stats.of(CHEAP, WALL).trust(WALL) < 0.8
    with pytest.raises(NoEligibleHoster) as info:
        order(reg, RoutingPreferences(trusted_only=True), stats)
    assert "trusted_only" in info.value.report.message
    succeed(stats, CHEAP, 120)
    assert stats.of(CHEAP, WALL).trust(WALL) > 0.8
    assert order(reg, RoutingPreferences(trusted_only=True), stats)[0].hoster.hoster_id == CHEAP


def test_failures_midstream_and_slowness_against_the_advertised_latency_cost_trust() -> None:
    clean, broken, slow = NetworkStats(), NetworkStats(), NetworkStats()
    for s in (clean, broken):
        succeed(s, CHEAP, 150)
    fail(broken, CHEAP, 30, chunks_sent=3)
    slow.of(CHEAP, WALL).advertised_ttft_ms = 100
    succeed(slow, CHEAP, 150, ttft_ms=400)
    trust = {n: s.of(CHEAP, WALL).trust(WALL) for n, s in (("clean", clean), ("broken", broken), ("slow", slow))}
    assert trust["clean"] > 0.85
    assert trust["broken"] < trust["clean"] - 0.2
    assert trust["slow"] < trust["clean"] - 0.3


def test_max_latency_ms_skips_hosters_observed_slower() -> None:
    stats = NetworkStats()
    succeed(stats, CHEAP, 5, ttft_ms=900)
    succeed(stats, FAST, 5, ttft_ms=50)
    reg = registry(hoster(CHEAP, 1), hoster(FAST, 9))
    assert [c.hoster.hoster_id for c in order(reg, RoutingPreferences(max_latency_ms=200), stats)] == [FAST]
    with pytest.raises(NoEligibleHoster) as info:
        order(reg, RoutingPreferences(max_latency_ms=10), stats)
    assert "max_latency_ms" in info.value.report.message


def test_a_failing_hoster_cools_down_then_gets_probed_back_in() -> None:
    stats = NetworkStats()
    reg = registry(hoster(CHEAP, 1), hoster(FAST, 9))
    fail(stats, CHEAP, 3)
    ids = [c.hoster.hoster_id for c in order(reg, RoutingPreferences(tier="cheapest"), stats)]
    assert ids == [FAST]
    later = WALL + COOLDOWN_BASE_S + 1
    assert stats.of(CHEAP, later).probing(later)
    probe = order_candidates(reg, stats, "m", RoutingPreferences(tier="cheapest"), PROFILE, 101.0, later, 5, set())
    assert probe[0].hoster.hoster_id == CHEAP
    busy = order_candidates(reg, stats, "m", RoutingPreferences(tier="cheapest"), PROFILE, 101.0, later, 5, {CHEAP})
    assert [c.hoster.hoster_id for c in busy] == [FAST]  # one probe at a time
    fail(stats, CHEAP, 1)
    assert stats.of(CHEAP, WALL).cooldown_s == 2 * COOLDOWN_BASE_S  # failed probe: longer cooldown
    succeed(stats, CHEAP, 1)
    assert not stats.of(CHEAP, WALL).probing(later)


def test_auto_picks_among_models_that_fit_the_request() -> None:
    small = hoster(CHEAP, 1, model="small", context_length=1000, capabilities=["json"])
    big = hoster(FAST, 9, model="big", context_length=100_000, capabilities=["tools", "json"])
    reg = registry(small, big)
    stats = NetworkStats()
    cheap = RoutingPreferences(tier="cheapest")
    assert order(reg, cheap, stats, model="auto")[0].offer.model == "small"
    long = RequestProfile(prompt_tokens=5000, max_tokens=100)
    assert [c.offer.model for c in order(reg, cheap, stats, model="auto", profile=long)] == ["big"]
    tools = RequestProfile.of({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 50)
    assert [c.offer.model for c in order(reg, cheap, stats, model="auto", profile=tools)] == ["big"]


def test_fallback_models_follow_the_main_model_for_failover() -> None:
    reg = registry(hoster(CHEAP, 1, model="main"), hoster(FAST, 1, model="backup"))
    models = [c.offer.model for c in order(reg, RoutingPreferences(fallback_models=["backup"]), NetworkStats(), "main")]
    assert models == ["main", "backup"]


def test_stats_survive_a_dump_and_load() -> None:
    stats = NetworkStats()
    succeed(stats, CHEAP, 130, ttft_ms=80)
    fail(stats, CHEAP, 3)
    before = stats.of(CHEAP, WALL)
    after = HosterStats.load(before.dump(), WALL)
    assert after.trust(WALL) == pytest.approx(before.trust(WALL))
    assert after.cooling(WALL) == before.cooling(WALL)
    assert after.speed["m"].ttft_p95_ms == before.speed["m"].ttft_p95_ms
    assert set(stats.take_dirty()) == {CHEAP}
    assert stats.take_dirty() == {}


def test_require_parameters_keeps_only_hosters_that_take_every_parameter() -> None:
    picky = hoster(CHEAP, 1).model_copy(update={"supported_parameters": ["max_tokens", "temperature"]})
    reg = registry(picky, hoster(FAST, 9))
    profile = RequestProfile.of({"messages": [], "max_tokens": 5, "seed": 3}, 50)
    strict = RoutingPreferences(tier="cheapest", require_parameters=True)
    assert [c.hoster.hoster_id for c in order(reg, strict, NetworkStats(), profile=profile)] == [FAST]
    relaxed = order(reg, RoutingPreferences(tier="cheapest"), NetworkStats(), profile=profile)
    assert relaxed[0].hoster.hoster_id == CHEAP


def test_trusted_only_needs_a_verified_hoster_where_the_model_has_a_reference() -> None:
    stats, checks = NetworkStats(), Verifications()
    reg = registry(hoster(CHEAP, 1, quantization="fp16"), hoster(FAST, 2, quantization="fp16"))
    succeed(stats, CHEAP, 120)
    succeed(stats, FAST, 120)
    trusted = RoutingPreferences(trusted_only=True)

    def served(prefs: RoutingPreferences) -> set[str]:
        picked = order_candidates(reg, stats, "m", prefs, PROFILE, 101.0, WALL, 5, verifications=checks)
        return {c.hoster.hoster_id for c in picked}

    assert served(trusted) == {CHEAP, FAST}  # no reference: trust alone
    checks.references = {"m": frozenset({"ref"})}
    with pytest.raises(NoEligibleHoster) as info:
        served(trusted)  # both trusted, neither verified
    assert "verified" in info.value.report.message
    for _ in range(8):
        checks.fold(FAST, "m", CheckEvidence(at=WALL, shape="greedy", reference="ref", passed=True, positions=3,
                                             shared=3))  # fmt: skip
    assert served(trusted) == {FAST}
    # A failed hoster's declared quantization is not believed.
    for _ in range(3):
        checks.fold(CHEAP, "m", CheckEvidence(at=WALL, shape="greedy", reference="ref", passed=False, positions=1,
                                              shared=0))  # fmt: skip
    assert served(RoutingPreferences(quantizations=["fp16"])) == {FAST}
