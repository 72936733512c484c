"""What the router reads back from its stats bucket was written by some router, maybe an older or a broken one
(a NaN it was fed is stored by orjson as null): every unusable number counts as absent, and the hoster's trust
and routing work on what is left."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from libs.contracts.routing import RoutingPreferences
from services.router.service import RequestProfile, order_candidates
from services.router.settings import RouterSettings
from services.router.stats import COOLDOWN_MAX_S, HosterStats, NetworkStats
from tests.unit.router.test_registry import H1, registry_with, status

NOW = 1_700_000_000.0


def stored(stats: HosterStats, **changes: Any) -> dict[str, Any]:
    """``stats`` as the bucket holds it, with ``changes``."""
    record: dict[str, Any] = orjson.loads(orjson.dumps({"hoster_id": H1, **stats.dump()}))
    record.update(changes)
    return record


def healthy() -> HosterStats:
    stats = HosterStats(first_seen=NOW - 7200)
    for _ in range(30):
        stats.observe("m", "succeeded", 5, 120.0, 40, 900.0, NOW - 60)
    return stats


@pytest.mark.parametrize(
    "changes",
    [
        {"first_seen": None, "lifetime": None, "cooldown_until": None, "cooldown_s": None, "last_attempt": None},
        {"first_seen": "yesterday", "lifetime": "many", "consecutive_failures": 1.5, "discrepancies": -4},
        {"outcomes": None, "discrepant": 7, "speed": None},
        {"outcomes": "ooxq", "speed": {"m": {"ttft": None, "tps": None, "samples": [None, 120.0, "NaN", None]}}},
        {"speed": {"m": {"ttft": float("nan"), "tps": float("inf"), "samples": [float("nan"), -1.0, 1e300]}}},
        {"speed": {"m": None, "other": [1, 2]}, "lifetime": 1e300, "cooldown_s": float("inf")},
    ],
)
def test_stored_stats_with_unusable_numbers_load_to_a_usable_trust(changes: dict[str, Any]) -> None:
    loaded = HosterStats.load(stored(healthy(), **changes), NOW)
    terms = loaded.trust_terms(NOW)
    assert 0 <= terms.score <= 1
    assert all(math.isfinite(v) for v in terms.model_dump().values() if v is not None)
    assert not loaded.cooling(NOW)
    assert loaded.ttft_median_ms is None or math.isfinite(loaded.ttft_median_ms)
    # The hoster is routed: ordering the candidates reads its trust and speed.
    registry = registry_with(status(H1))
    stats = NetworkStats(hosters={H1: loaded})
    picked = order_candidates(registry, stats, "m", RoutingPreferences(), RequestProfile(10, 10), 101.0, NOW, 5)
    assert [c.hoster.hoster_id for c in picked] == [H1]


def test_what_is_usable_in_a_stored_record_is_kept() -> None:
    before = healthy()
    samples: list[Any] = [None, *before.speed["m"].ttft_samples]
    after = HosterStats.load(stored(before, speed={"m": {**before.speed["m"].dump(), "samples": samples}}), NOW)
    assert after.trust(NOW) == pytest.approx(before.trust(NOW))
    assert list(after.speed["m"].ttft_samples) == list(before.speed["m"].ttft_samples)


@pytest.mark.parametrize("record", [None, [], "stats", 3, {}])
def test_a_record_that_is_not_stats_loads_as_a_newcomer(record: Any) -> None:
    loaded = HosterStats.load(record, NOW)
    assert loaded.trust(NOW) == pytest.approx(HosterStats(first_seen=NOW).trust(NOW))


def test_a_stored_cooldown_never_outlasts_the_longest_one() -> None:
    loaded = HosterStats.load(stored(healthy(), cooldown_until=NOW + 10**9, cooldown_s=10**9), NOW)
    assert not loaded.cooling(NOW + COOLDOWN_MAX_S)


DISCREPANCIES_TO_COOL = RouterSettings().discrepancies_to_cool


def test_repeated_discrepancies_cool_a_hoster_down() -> None:
    stats = HosterStats(first_seen=100.0)
    for i in range(DISCREPANCIES_TO_COOL):
        assert not stats.cooling(100.0 + i)
        stats.observe("m", "succeeded", 1, 10.0, 5, 20.0, 100.0 + i)
        stats.observe_discrepancy(100.0 + i, DISCREPANCIES_TO_COOL)
    assert stats.cooling(100.0 + DISCREPANCIES_TO_COOL)
    honest = HosterStats(first_seen=100.0)
    for i in range(10):  # one in two: the dishonesty term lowers trust, but no cooldown
        honest.observe("m", "succeeded", 1, 10.0, 5, 20.0, 100.0 + i)
        if i % 2:
            honest.observe_discrepancy(100.0 + i, DISCREPANCIES_TO_COOL)
    assert not honest.cooling(110.0)
