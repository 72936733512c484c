"""``GET /v1/key``: our account and key, in the shape OpenRouter's clients read."""

from __future__ import annotations

from typing import Any

import pytest

from libs.contracts.billing import KeyReport
from services.ingress.service import key_page


def report(**overrides: Any) -> KeyReport:
    fields: dict[str, Any] = {
        "key_id": "key_1",
        "prefix": "ngk_abcd…",
        "rpm": None,
        "tpm": None,
        "balance": 7_500_000,
        "daily_cap": None,
        "spent_today": 0,
        "usage": 2_500_000,
        "usage_daily": 1_000_000,
        "usage_weekly": 1_500_000,
        "usage_monthly": 2_000_000,
    }
    return KeyReport(**{**fields, **overrides})


def test_without_a_cap_nothing_resets_and_the_balance_is_what_remains() -> None:
    data = key_page(report())["data"]
    assert (data["label"], data["limit"], data["limit_reset"], data["limit_remaining"]) == (
        "ngk_abcd…",
        None,
        None,
        7.5,
    )
    assert (data["usage"], data["usage_daily"], data["usage_weekly"], data["usage_monthly"]) == (2.5, 1, 1.5, 2)
    assert data["rate_limit"] == {"requests": -1, "tokens": -1, "interval": "1m"}
    assert data["is_free_tier"] is False


@pytest.mark.parametrize(
    ("balance", "spent_today", "remaining"),
    [
        (7_500_000, 1_000_000, 4.0),  # the cap's room is smaller than the balance
        (2_000_000, 1_000_000, 2.0),  # the balance is smaller than the cap's room
        (7_500_000, 9_000_000, 0.0),  # the cap is spent (holds count): nothing left, never negative
    ],
)
def test_a_daily_cap_is_the_keys_limit_resetting_daily(balance: int, spent_today: int, remaining: float) -> None:
    data = key_page(report(daily_cap=5_000_000, balance=balance, spent_today=spent_today))["data"]
    assert (data["limit"], data["limit_reset"], data["limit_remaining"]) == (5.0, "daily", remaining)


def test_the_keys_rate_limits_per_minute() -> None:
    assert key_page(report(rpm=60, tpm=100_000))["data"]["rate_limit"] == {
        "requests": 60,
        "tokens": 100_000,
        "interval": "1m",
    }
