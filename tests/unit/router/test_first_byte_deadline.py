"""An attempt's first-byte deadline follows what its hoster has shown; a failover prefers hosters that did not
just fail."""

from __future__ import annotations

import pytest

from libs.contracts.routing import RoutingPreferences
from services.router.service import FirstByteBudget, first_byte_deadline_ms, prefer_healthy
from services.router.stats import NetworkStats
from tests.unit.router.test_marketplace import CHEAP, CLOUD, FAST, WALL, fail, hoster, order, registry, succeed

BUDGET = FirstByteBudget(floor_ms=5_000, ceiling_ms=30_000, multiple=4, ms_per_prompt_token=0.2)


@pytest.mark.parametrize(
    ("observed", "advertised", "prompt_tokens", "max_latency_ms", "expected"),
    [
        (None, None, 10, None, 30_000),  # never measured, promised nothing: the ceiling
        (3_000, None, 0, None, 12_000),  # four times its observed p95
        (3_000, 100, 0, None, 12_000),  # what it did counts over what it said
        (None, 2_000, 0, None, 8_000),  # what it said, until it is measured
        (100, None, 0, None, 5_000),  # never under the floor
        (100, None, 50_000, None, 10_400),  # a long prompt takes its prefill time
        (20_000, None, 0, None, 30_000),  # never over the ceiling
        (3_000, None, 0, 1_000, 2_000),  # the client's max_latency_ms caps it at twice that
        (None, None, 0, 500, 1_000),
    ],
)
def test_the_first_byte_deadline_follows_the_hoster_and_the_request(
    observed: float | None, advertised: float | None, prompt_tokens: int, max_latency_ms: int | None, expected: float
) -> None:
    assert first_byte_deadline_ms(BUDGET, observed, advertised, prompt_tokens, max_latency_ms) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("observed", "advertised", "peers", "expected"),
    [
        (None, None, [500, 2_000], 8_000),  # a newcomer: four times its slowest measured peer's p95
        (None, None, [100], 5_000),  # within the floor
        (None, None, [9_000], 30_000),  # and the ceiling
        (None, None, [], 30_000),  # a model nobody was measured on: the ceiling
        (None, 1_500, [100], 6_000),  # what it advertised counts over its peers
        (3_000, None, [100], 12_000),  # and what it showed over both
    ],
)
def test_a_hoster_that_has_shown_nothing_is_held_to_what_its_peers_on_the_model_show(
    observed: float | None, advertised: float | None, peers: list[float], expected: float
) -> None:
    assert first_byte_deadline_ms(BUDGET, observed, advertised, 0, None, peers) == pytest.approx(expected)


def test_the_peers_are_the_hosters_measured_on_the_model() -> None:
    stats = NetworkStats()
    succeed(stats, FAST, 5, ttft_ms=300)  # measured on "m"
    succeed(stats, CHEAP, 4, ttft_ms=9_000)  # too few attempts to say anything yet
    succeed(stats, CLOUD, 5, ttft_ms=700, model="other")
    assert stats.measured_ttft_p95s_ms("m") == [300]
    assert stats.measured_ttft_p95s_ms("other") == [700]
    assert stats.measured_ttft_p95s_ms("nobody's") == []


def test_a_failover_tries_hosters_that_did_not_just_fail_first_and_keeps_the_rest_last() -> None:
    stats = NetworkStats()
    queue = order(registry(hoster(CHEAP, 1), hoster(FAST, 2), hoster(CLOUD, 3)), RoutingPreferences(tier="cheapest"),
                  stats)  # fmt: skip
    assert [c.hoster.hoster_id for c in queue] == [CHEAP, FAST, CLOUD]
    fail(stats, CHEAP, 3)  # cooling
    fail(stats, FAST, 1)  # failed just now
    prefer_healthy(queue, stats, WALL)
    assert [c.hoster.hoster_id for c in queue] == [CLOUD, FAST, CHEAP]


def test_a_failover_prefers_hosters_seen_to_serve_over_unknown_ones() -> None:
    stats = NetworkStats()
    queue = order(registry(hoster(CHEAP, 1), hoster(FAST, 2), hoster(CLOUD, 3)), RoutingPreferences(tier="cheapest"),
                  stats)  # fmt: skip
    prefer_healthy(queue, stats, WALL)
    assert [c.hoster.hoster_id for c in queue] == [CHEAP, FAST, CLOUD]  # nothing known: the ranked order
    succeed(stats, CLOUD, 1)
    prefer_healthy(queue, stats, WALL)
    assert [c.hoster.hoster_id for c in queue] == [CLOUD, CHEAP, FAST]
