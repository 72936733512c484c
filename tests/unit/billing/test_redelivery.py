"""When billing tries a failed usage event again, and when it gives up on it."""

from __future__ import annotations

from services.billing.durable import Redelivery


def test_a_failed_event_waits_longer_each_time_then_is_dead_lettered() -> None:
    policy = Redelivery(max_deliver=5, backoff_s=1.0, backoff_max_s=3.0)
    assert [policy.delay(n, unreadable=False) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, None]


def test_an_unreadable_event_is_dead_lettered_at_once() -> None:
    assert Redelivery(max_deliver=5, backoff_s=1.0).delay(1, unreadable=True) is None
