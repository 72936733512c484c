"""One hoster's detail for the console: the trust terms multiply to the score routing uses, and the speed and
live status are the registry's and the stats' own."""

from __future__ import annotations

import math

import pytest

from libs.contracts.hosters import HosterHeartbeat, HosterStatus, ModelOffer, RegisteredHoster
from services.router.reports import hoster_detail
from services.router.service import HosterRegistry
from services.router.stats import NetworkStats

H1 = "11111111-1111-4111-8111-111111111111"
OFFLINE = "22222222-2222-4222-8222-222222222222"
WALL = 1_700_000_000.0


def live_registry() -> HosterRegistry:
    registry = HosterRegistry(ttl_s=3.0)
    offer = ModelOffer(model="m", upstream_model="m", input_price=100, output_price=200)
    status = HosterStatus(hoster_id=H1, name="box", cloud=False, region="eu", capacity=4, in_flight=1, models=[offer],
                          advertised_ttft_ms=100.0)  # fmt: skip
    registry.observe(HosterHeartbeat(adapter_id="a", interval_s=1.0, hosters=[status]), now=10.0, wall=int(WALL))
    registry.register([RegisteredHoster(hoster_id=OFFLINE, name="gone", region="us")])
    return registry


def busy_stats() -> NetworkStats:
    stats = NetworkStats()
    stats.of(H1, WALL - 1800).advertised_ttft_ms = 100.0
    for n in range(30):
        outcome = "failed" if n % 10 == 0 else "succeeded"
        stats.observe(H1, WALL, model="m", outcome=outcome, chunks_sent=n % 20 == 0, ttft_ms=80.0 + n * 4,
                      completion_tokens=50, duration_ms=1000.0 + n * 4, tokens_per_s=50.0)  # fmt: skip
    stats.of(H1, WALL).observe_discrepancy()
    return stats


def test_the_trust_terms_multiply_to_the_score_routing_uses() -> None:
    stats = busy_stats()
    detail = hoster_detail(H1, live_registry(), stats, now=10.5, wall=WALL)
    assert detail is not None
    t = detail.trust
    product = (
        t.reliability * (1 - t.midstream) * math.sqrt(t.latency) * (0.5 + 0.5 * t.history) * (1 - t.dishonesty) ** 2
    )
    assert t.score == pytest.approx(stats.of(H1, WALL).trust(WALL), abs=1e-4)
    assert product == pytest.approx(t.score, abs=1e-4)
    assert 0 < t.score < 1
    # The counts behind the terms: 30 attempts, 3 failed (2 mid-stream), one lie, half an hour old.
    assert (t.window_attempts, t.window_successes, t.window_midstream_failures) == (30, 27, 2)
    assert t.window_discrepancies == 1
    assert t.reliability == pytest.approx(28 / 32)
    assert t.midstream == pytest.approx(2 / 30)
    assert t.dishonesty == pytest.approx(1 / 32)
    assert t.history == pytest.approx(0.8 * 0.3 + 0.2 * 0.5)
    assert t.observed_p95_ttft_ms is not None
    assert t.latency == pytest.approx(100.0 / t.observed_p95_ttft_ms)


def test_a_live_hosters_status_prices_and_speed_per_model() -> None:
    detail = hoster_detail(H1, live_registry(), busy_stats(), now=10.5, wall=WALL)
    assert detail is not None
    assert (detail.live, detail.name, detail.region, detail.capacity, detail.in_flight) == (True, "box", "eu", 4, 1)
    assert [(m.model, m.input_price, m.output_price) for m in detail.models] == [("m", 100, 200)]
    (speed,) = detail.speed
    assert speed.samples == 27
    assert speed.ttft_median_ms is not None
    assert speed.tokens_per_s is not None
    assert speed.tokens_per_s > 0
    assert (detail.attempts, detail.usage_discrepancies) == (30, 1)


def test_a_registered_hoster_never_seen_is_a_newcomer_and_an_unknown_one_is_none() -> None:
    stats = NetworkStats()
    detail = hoster_detail(OFFLINE, live_registry(), stats, now=10.5, wall=WALL)
    assert detail is not None
    assert (detail.live, detail.name, detail.region, detail.models, detail.speed) == (False, "gone", "us", [], [])
    assert detail.trust.score == pytest.approx(0.25)  # a new hoster starts at 0.25
    assert OFFLINE not in stats.hosters  # reading it created no stats
    assert hoster_detail("33333333-3333-4333-8333-333333333333", live_registry(), stats, 10.5, WALL) is None


def test_the_network_listing_gives_each_hoster_its_median_ttft_and_speed() -> None:
    stats = busy_stats()
    hoster = stats.of(H1, WALL)
    recent = sorted(list(hoster.speed["m"].ttft_samples)[-20:])
    assert hoster.ttft_median_ms == recent[len(recent) // 2]
    assert hoster.tokens_per_s == hoster.speed["m"].tps_ewma
    assert NetworkStats().of(OFFLINE, WALL).ttft_median_ms is None


def test_a_model_measured_implausibly_fast_is_reported_suspicious_until_20_plausible_attempts_pass() -> None:
    """What the console shows as "not believed": the detail's per-model speed and the network listing say
    which models' speed routing does not believe now, and how many attempts were past the bound."""
    stats = busy_stats()
    stats.observe(H1, WALL, model="m", outcome="succeeded", chunks_sent=4, ttft_ms=0.5, completion_tokens=64,
                  duration_ms=1.0, implausible_speed=True)  # fmt: skip
    detail = hoster_detail(H1, live_registry(), stats, now=10.5, wall=WALL)
    assert detail is not None
    (speed,) = detail.speed
    assert (speed.implausible_speeds, speed.suspicious, detail.implausible_speeds) == (1, True, 1)
    assert speed.samples == 27  # its timing is left out of the figures
    assert stats.of(H1, WALL).speed_suspicious_models == ["m"]
    for _ in range(20):
        stats.observe(H1, WALL, model="m", outcome="succeeded", chunks_sent=4, ttft_ms=90.0, completion_tokens=50,
                      duration_ms=1000.0, tokens_per_s=50.0)  # fmt: skip
    detail = hoster_detail(H1, live_registry(), stats, now=10.5, wall=WALL)
    assert detail is not None
    (speed,) = detail.speed
    assert (speed.implausible_speeds, speed.suspicious, detail.implausible_speeds) == (1, False, 1)
    assert stats.of(H1, WALL).speed_suspicious_models == []
