"""How adapters of one hoster split its capacity."""

from __future__ import annotations

import pytest

from services.hoster_adapter.upstream import capacity_share


@pytest.mark.parametrize(
    ("capacity", "adapters"),
    [(64, ["a"]), (64, ["a", "b"]), (10, ["c", "a", "b"]), (2, ["a", "b", "c"]), (1, ["b", "a"])],
)
def test_the_shares_add_up_to_the_capacity_exactly(capacity: int, adapters: list[str]) -> None:
    shares = [capacity_share(capacity, adapters, a) for a in adapters]
    assert sum(shares) == capacity
    assert max(shares) - min(shares) <= 1


def test_an_adapter_alone_has_the_whole_capacity_and_counts_itself_once() -> None:
    assert capacity_share(16, [], "a") == 16
    assert capacity_share(16, ["a"], "a") == 16
    assert capacity_share(16, ["b"], "a") == 8
