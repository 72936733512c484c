"""The rules of a request's lifecycle, in memory: what it reserves, when an attempt fails over, what each
attempt is billed (held to the request's bounds, then to the text the client received)."""

from __future__ import annotations

from libs.contracts.common import Usage
from libs.contracts.pricing import UsageBounds, cost_of
from libs.contracts.routing import AttemptFinished, RequestDelivered, RouteRequest, RoutingPreferences
from services.router.service import (
    MAX_ATTEMPTS,
    InFlight,
    bill_attempt,
    billable,
    can_fail_over,
    hold_to_text,
    max_cost,
)
from services.router.stats import NetworkStats
from tests.unit.router.test_marketplace import CHEAP, FAST, WALL, hoster, order, registry

BOUNDS = UsageBounds(prompt=100, completion=50)


def outcome(prompt: int, completion: int, attempt: int = 1, **fields: object) -> AttemptFinished:
    values: dict[str, object] = {
        "request_id": "r", "attempt": attempt, "hoster_id": CHEAP, "adapter_id": "a", "model": "m", "stream": True,
        "outcome": "succeeded", "chunks_sent": 3, "input_price": 1_000_000, "output_price": 2_000_000,
        "duration_ms": 1, "finished_at": WALL,
        "usage": Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    }  # fmt: skip
    return AttemptFinished.model_validate(values | fields)


def flight(attempt: int = 1) -> InFlight:
    route = RouteRequest(
        request_id="r", reply_subject="x", model="m", stream=True, include_usage=False, created=0,
        routing=RoutingPreferences(), body={},
    )  # fmt: skip
    candidates = order(registry(hoster(CHEAP, 1)), RoutingPreferences(), NetworkStats())
    return InFlight(route=route, queue=[], candidate=candidates[0], adapter_id="a", attempt=attempt,
                    prompt_tokens=1, first_byte_deadline_ms=None, started=0.0, bounds=BOUNDS)  # fmt: skip


def test_the_reservation_covers_every_bounded_token_at_the_dearest_candidate() -> None:
    candidates = order(registry(hoster(CHEAP, 1), hoster(FAST, 5)), RoutingPreferences(), NetworkStats())
    dearest = max(c.offer.input_price for c in candidates)
    dear = next(c for c in candidates if c.offer.input_price == dearest)
    expected = cost_of(100, 50, dear.offer.input_price, dear.offer.output_price, 1000).client
    assert max_cost(candidates, BOUNDS, 1000) == expected


def test_an_honest_report_is_billed_as_reported() -> None:
    billed = bill_attempt(BOUNDS, outcome(10, 5))
    assert (billed.usage.prompt_tokens, billed.usage.completion_tokens, billed.usage_discrepancy) == (10, 5, None)


def test_a_report_past_the_bounds_is_billed_at_them_and_says_why() -> None:
    billed = bill_attempt(BOUNDS, outcome(10_000, -3))
    assert (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (100, 0)
    assert billed.usage_discrepancy is not None
    assert "reported 10000 prompt" in billed.usage_discrepancy


def test_the_serving_attempt_is_held_to_the_text_the_client_received() -> None:
    f = flight()
    event = outcome(10, 40)
    f.reported[1] = event.usage
    f.billed.append(bill_attempt(f.bounds, event))
    billed, caught = hold_to_text(f, RequestDelivered(request_id="r", attempt=1, text_bytes=6, choices=1))
    assert billed[-1].usage.completion_tokens == 7  # 6 bytes of text and one end-of-sequence token
    assert caught == CHEAP
    assert "6 bytes of text reached the client" in (billed[-1].usage_discrepancy or "")
    # Within the text: unchanged, nobody caught.
    same, none = hold_to_text(f, RequestDelivered(request_id="r", attempt=1, text_bytes=400, choices=1))
    assert same == f.billed
    assert none is None


def test_a_delivery_note_of_another_attempt_changes_nothing() -> None:
    f = flight(attempt=2)
    for attempt in (1, 2):
        event = outcome(10, 40, attempt=attempt)
        f.reported[attempt] = event.usage
        f.billed.append(bill_attempt(f.bounds, event))
    billed, caught = hold_to_text(f, RequestDelivered(request_id="r", attempt=1, text_bytes=0, choices=1))
    assert billed == f.billed
    assert caught is None


def test_failover_only_before_the_client_got_anything_and_within_the_attempts() -> None:
    failed = outcome(1, 0, outcome="failed", chunks_sent=0)
    assert can_fail_over(failed, flight())
    assert not can_fail_over(failed.model_copy(update={"chunks_sent": 2}), flight())
    assert can_fail_over(failed.model_copy(update={"chunks_sent": 2, "stream": False}), flight())
    assert not can_fail_over(failed, flight(attempt=MAX_ATTEMPTS))
    cancelled = flight()
    cancelled.cancelled = True
    assert not can_fail_over(failed, cancelled)
    assert billable(outcome(1, 1))
    assert not billable(failed)
