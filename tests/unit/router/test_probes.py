"""Who gets probed (what a probe is and how its answer is judged: ``test_covert.py``)."""

from __future__ import annotations

from services.router.probes import probe_due
from services.router.stats import HosterStats
from tests.unit.router.test_marketplace import WALL


def test_new_and_idle_hosters_are_probed_cooling_ones_are_not() -> None:
    stats = HosterStats(first_seen=WALL)
    assert probe_due(stats, WALL, new_attempts=20, idle_s=600)
    stats.lifetime, stats.last_attempt = 20, WALL
    assert not probe_due(stats, WALL + 10, new_attempts=20, idle_s=600)
    assert probe_due(stats, WALL + 601, new_attempts=20, idle_s=600)
    stats.cool_down(WALL + 601)
    assert not probe_due(stats, WALL + 602, new_attempts=20, idle_s=600)
