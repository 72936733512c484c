"""The ingress's key cache (least recently used out first) and its budget of wrong keys per address."""

from __future__ import annotations

import pytest

from libs.contracts.billing import KeyInfo
from libs.platform.ratelimit import FailureBudget
from services.ingress.gateway import KeyCache


def test_the_key_cache_forgets_the_least_recently_used_key_not_everything() -> None:
    cache = KeyCache(ttl_s=10, max_entries=3)
    for name in "abc":
        cache.put(name, KeyInfo(status="unknown"), now=0)
    assert cache.get("a", now=1) is not None  # a is used again: b is now the oldest
    cache.put("d", KeyInfo(status="unknown"), now=1)
    assert len(cache) == 3
    assert cache.get("b", now=1) is None
    assert all(cache.get(name, now=1) is not None for name in "acd")
    assert cache.get("a", now=10) is None  # past its TTL


def test_an_address_spends_its_burst_then_waits_for_the_refill() -> None:
    budget = FailureBudget(per_minute=60, burst=3)
    for _ in range(3):
        assert budget.wait_s("10.0.0.1", now=0) == 0
        budget.spend("10.0.0.1", now=0)
    assert budget.wait_s("10.0.0.1", now=0) == pytest.approx(1.0)
    assert budget.wait_s("10.0.0.2", now=0) == 0  # another address is not touched
    assert budget.wait_s("10.0.0.1", now=1.0) == 0  # one a second comes back
    budget.spend("10.0.0.1", now=1.0)
    assert budget.wait_s("10.0.0.1", now=1.5) == pytest.approx(0.5)
    assert budget.wait_s("10.0.0.1", now=1000) == 0


def test_the_budget_remembers_a_bounded_number_of_addresses() -> None:
    budget = FailureBudget(per_minute=60, burst=1, max_addresses=2)
    for address in ("a", "b", "c"):
        budget.spend(address, now=0)
    assert budget.wait_s("a", now=0) == 0  # forgotten: a fresh bucket
    assert budget.wait_s("c", now=0) > 0


def test_a_good_key_gives_its_token_back() -> None:
    budget = FailureBudget(per_minute=0, burst=1)
    budget.spend("a", now=0)
    assert budget.wait_s("a", now=0) > 0
    budget.refund("a")
    assert budget.wait_s("a", now=0) == 0
