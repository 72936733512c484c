from __future__ import annotations

from libs.contracts.billing import RateLimitState
from libs.contracts.pricing import cost_of, estimate_prompt_tokens, requested_max_tokens


def test_cost_splits_into_hoster_earning_and_fee_and_rounds_up() -> None:
    # 1,000 prompt tokens at 0.5 and 100 completion tokens at 1.5 credits per million, 10% fee.
    cost = cost_of(1000, 100, 500_000, 1_500_000, 1000)
    assert cost.hoster == 650
    assert cost.fee == 65
    assert cost.client == cost.hoster + cost.fee
    tiny = cost_of(1, 0, 1, 0, 1000)
    assert (tiny.hoster, tiny.fee, tiny.client) == (1, 1, 2)
    assert cost_of(0, 0, 500_000, 1_500_000, 1000).client == 0


def test_prompt_estimate_counts_text_and_text_parts() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}, {"type": "image_url"}]},
        ]
    }
    assert estimate_prompt_tokens(body) == 20
    assert estimate_prompt_tokens({"messages": []}) == 1


def test_completion_budget_prefers_max_completion_tokens() -> None:
    assert requested_max_tokens({"max_tokens": 50, "max_completion_tokens": 20}, 4096) == 20
    assert requested_max_tokens({"max_tokens": 50}, 4096) == 50
    assert requested_max_tokens({}, 4096) == 4096


def test_rate_limit_headers_only_for_limits_that_are_set() -> None:
    state = RateLimitState(limit_requests=30, remaining_requests=-2, reset_s=12.5)
    assert state.headers() == {
        "x-ratelimit-limit-requests": "30",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12.500s",
    }
    assert RateLimitState().headers() == {}
