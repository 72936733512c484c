"""When spot checks are due, and how peers' comparisons add up (the checker's pure parts)."""

from __future__ import annotations

import random

from services.router.spotchecks import combined, pairs_due
from services.router.verification import CheckResult


def result(passed: bool) -> CheckResult:
    return CheckResult("greedy", 3, 3, None, None, None if passed else "differs")


def test_checks_come_at_random_at_the_asked_rate_and_pairs_gone_are_forgotten() -> None:
    rng = random.Random(1)
    due: dict[tuple[str, str], float] = {}
    live = {("a", "m"), ("b", "m")}
    assert pairs_due(due, live, 0.0, 360, rng) == []  # first checks scheduled, none due yet
    fired = 0
    gaps: set[float] = set()
    for tick in range(1, 4001):  # 4000 s at one check per 10 s on average for each pair (checked every 1 s)
        for pair in pairs_due(due, live, float(tick), 360, rng):
            fired += 1
            gaps.add(round(due[pair] - tick, 3))
    assert 640 < fired < 800
    assert len(gaps) > 100  # no fixed period a hoster could learn
    pairs_due(due, {("a", "m")}, 4001.0, 360, rng)
    assert set(due) == {("a", "m")}


def test_peers_pass_an_answer_when_at_least_half_agree() -> None:
    assert combined([]) is None
    assert combined([result(True)]) == result(True)
    assert combined([result(False)]) == result(False)
    both = combined([result(True), result(False)])
    assert both is not None
    assert both.passed
    neither = combined([result(False), result(False)])
    assert neither is not None
    assert not neither.passed
