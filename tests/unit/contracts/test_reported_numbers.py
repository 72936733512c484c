"""What a hoster reports is read within PostgreSQL's integers: huge counts and prices are held to the limits
(a whole-number float too), a negative count is kept for the bounds to see, a negative price is zero."""

from __future__ import annotations

from libs.contracts.common import MAX_COUNT, MAX_PRICE, Usage
from libs.contracts.routing import AttemptFinished


def test_huge_and_float_counts_are_held_to_the_largest_integer_column() -> None:
    usage = Usage.model_validate_json(
        b'{"prompt_tokens": 1e30, "completion_tokens": -5, "total_tokens": 99999999999999999999}'
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (MAX_COUNT, -5, MAX_COUNT)


def test_reported_prices_are_held_to_zero_and_the_largest_price() -> None:
    event = AttemptFinished.model_validate(
        {"request_id": "r", "attempt": 1, "router_id": "r", "hoster_id": "h", "adapter_id": "a", "model": "m",
         "stream": False, "outcome": "succeeded", "usage": {}, "chunks_sent": 10**40, "input_price": 10**40,
         "output_price": -3, "duration_ms": 1.0, "finished_at": 0.0}
    )  # fmt: skip
    assert (event.input_price, event.output_price, event.chunks_sent) == (MAX_PRICE, 0, MAX_COUNT)
