from __future__ import annotations

import orjson

from libs.contracts.billing import RateLimitState
from libs.contracts.common import COMPLETIONS, EMBEDDINGS
from libs.contracts.pricing import (
    IMAGE_TOKENS,
    cost_of,
    estimate_prompt_tokens,
    rate_limited_tokens,
    requested_max_tokens,
)


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


def test_a_rate_limit_counts_the_completion_budget_of_every_choice() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 40}]}
    assert rate_limited_tokens(chat, 100) == 10 + 100
    assert rate_limited_tokens(chat | {"n": 128}, 100) == 10 + 128 * 100
    prompts = {"prompt": ["x" * 40, "y" * 40, "z" * 40]}
    assert rate_limited_tokens(prompts, 16, COMPLETIONS) == 30 + 3 * 16  # every prompt, each completed
    assert rate_limited_tokens(prompts | {"best_of": 5, "n": 2}, 16, COMPLETIONS) == 30 + 3 * 5 * 16
    assert rate_limited_tokens({"input": ["x" * 40, "y" * 40]}, 0, EMBEDDINGS) == 20


def test_a_rate_limit_counts_tools_calls_and_images_as_input() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": "y" * 400}}}]
    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{" + "a" * 400 + "}"}}]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x" * 40}, image, image]},
            {"role": "assistant", "content": None, "tool_calls": call},
        ],
    }
    expected = 10 + (len(orjson.dumps(tools)) + len(orjson.dumps(call))) // 4 + 2 * IMAGE_TOKENS
    assert rate_limited_tokens(body, 0) == expected
    assert rate_limited_tokens({"functions": tools, "messages": []}, 0) == 1 + len(orjson.dumps(tools)) // 4
    huge = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 10**30}}}]}
    assert rate_limited_tokens(huge, 0) > 1  # an integer orjson cannot write still counts


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
