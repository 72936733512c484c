"""The rules of a request's lifecycle, in memory: what it reserves, when an attempt fails over, what each
attempt is billed (only what reached the client, on the network's records: the dispatch's prices, the
request's bounds, the text the ingress counted) and how a hoster's claims are taken."""

from __future__ import annotations

from libs.contracts.common import Usage
from libs.contracts.pricing import UsageBounds, cost_of
from libs.contracts.routing import AttemptFinished, RequestDelivered, RouteRequest, RoutingPreferences
from services.router.service import (
    MAX_ATTEMPTS,
    UNASKED_CANCEL,
    InFlight,
    Run,
    can_fail_over,
    charge,
    claimed_outcome,
    delivery_due,
    max_cost,
    record_of,
    speed_of,
    verdict,
)
from services.router.stats import NetworkStats
from tests.unit.router.test_marketplace import CHEAP, FAST, WALL, hoster, order, registry

BOUNDS = UsageBounds(prompt=100, completion=50)
ROUTE = RouteRequest(
    request_id="r", reply_subject="x", model="m", stream=True, include_usage=False, created=0,
    routing=RoutingPreferences(), body={},
)  # fmt: skip


def outcome(prompt: int, completion: int, attempt: int = 1, **fields: object) -> AttemptFinished:
    values: dict[str, object] = {
        "request_id": "r", "attempt": attempt, "hoster_id": CHEAP, "adapter_id": "a", "model": "m", "stream": True,
        "outcome": "succeeded", "chunks_sent": 3, "input_price": 1_000_000, "output_price": 2_000_000,
        "duration_ms": 1, "finished_at": WALL,
        "usage": Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    }  # fmt: skip
    return AttemptFinished.model_validate(values | fields)


def run(attempt: int = 1, report: AttemptFinished | None = None, deadline_ms: float | None = None) -> Run:
    candidate = order(registry(hoster(CHEAP, 1)), RoutingPreferences(), NetworkStats())[0]
    # The dispatch's prices are the offer's: 1 and 2 credits per million tokens (``hoster(CHEAP, 1)``).
    return Run(attempt, candidate, "a", f"x.{attempt}.t", 100.0, deadline_ms, report=report)


def flight(*runs: Run) -> InFlight:
    return InFlight(ROUTE, [], 1, BOUNDS, list(runs or [run()]), offers=len(runs or [None]))


def note(attempt: int = 1, text_bytes: int = 400, frames: int = 3, ttft_ms: float | None = 12.0) -> RequestDelivered:
    return RequestDelivered(request_id="r", attempt=attempt, text_bytes=text_bytes, choices=1, frames=frames,
                            ttft_ms=ttft_ms)  # fmt: skip


def test_the_reservation_covers_every_bounded_token_at_the_dearest_candidate() -> None:
    candidates = order(registry(hoster(CHEAP, 1), hoster(FAST, 5)), RoutingPreferences(), NetworkStats())
    dearest = max(c.offer.input_price for c in candidates)
    dear = next(c for c in candidates if c.offer.input_price == dearest)
    expected = cost_of(100, 50, dear.offer.input_price, dear.offer.output_price, 1000).client
    assert max_cost(candidates, BOUNDS, 1000) == expected


def test_an_honest_report_of_a_delivered_attempt_is_billed_as_reported_at_the_dispatchs_prices() -> None:
    r = run()
    r.report = outcome(10, 5, input_price=r.candidate.offer.input_price, output_price=r.candidate.offer.output_price)
    billed = charge(r, BOUNDS, note())
    assert billed is not None
    assert (billed.usage.prompt_tokens, billed.usage.completion_tokens, billed.usage_discrepancy) == (10, 5, None)
    assert (billed.input_price, billed.output_price) == (r.candidate.offer.input_price, r.candidate.offer.output_price)


def test_a_report_naming_its_own_prices_is_billed_at_the_dispatchs_and_flagged() -> None:
    r = run()
    r.report = outcome(10, 5, input_price=2**40, output_price=2**40)
    billed = charge(r, BOUNDS, note())
    assert billed is not None
    assert (billed.input_price, billed.output_price) == (r.candidate.offer.input_price, r.candidate.offer.output_price)
    assert billed.usage_discrepancy is not None
    assert "reported prices" in billed.usage_discrepancy


def test_a_report_past_the_bounds_is_billed_at_them_and_says_why() -> None:
    r = run(report=outcome(10_000, -3))
    billed = charge(r, BOUNDS, note())
    assert billed is not None
    assert (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (100, 0)
    assert "reported 10000 prompt" in (billed.usage_discrepancy or "")


def test_the_billed_completion_is_held_to_the_text_the_client_received() -> None:
    r = run(report=outcome(10, 40))
    billed = charge(r, BOUNDS, note(text_bytes=6))
    assert billed is not None
    assert billed.usage.completion_tokens == 7  # 6 bytes of text and one end-of-sequence token
    assert "6 bytes of text reached the client" in (billed.usage_discrepancy or "")


def test_nothing_is_billed_for_an_attempt_the_client_received_nothing_from() -> None:
    r = run(report=outcome(10, 40))
    assert charge(r, BOUNDS, None) is None  # no word from the ingress: nothing delivered
    assert charge(r, BOUNDS, note(frames=0, text_bytes=0)) is None
    assert charge(r, BOUNDS, note(attempt=2)) is None  # another attempt's content
    assert charge(run(), BOUNDS, note()) is None  # delivered, but the hoster claimed nothing


def test_a_cancel_the_network_did_not_ask_for_is_the_hosters_failure() -> None:
    cancelled = outcome(10, 5, outcome="cancelled")
    assert claimed_outcome(cancelled, flight()) == ("failed", UNASKED_CANCEL)
    asked = flight()
    asked.cancelled = True
    assert claimed_outcome(cancelled, asked) == ("cancelled", None)


def test_a_claimed_success_the_client_received_nothing_of_is_a_failure() -> None:
    r = run(report=outcome(10, 5))
    assert verdict(r, note(frames=0, text_bytes=0), 0.0)[0] == "failed"
    assert verdict(r, note(), 0.0)[0] == "succeeded"
    assert verdict(run(), note(), 0.0)[:2] == ("failed", "the hoster never reported the attempt's end")


def test_failover_only_before_the_client_got_anything_and_within_the_attempts() -> None:
    failed = run(report=outcome(1, 0, outcome="failed", chunks_sent=0))
    failed.end("failed", 1.0)
    assert can_fail_over(flight(failed))
    sent = run(report=outcome(1, 0, outcome="failed", chunks_sent=2))
    sent.end("failed", 1.0)
    assert not can_fail_over(flight(sent))
    assert not can_fail_over(flight(*[failed] * MAX_ATTEMPTS))
    cancelled = flight(failed)
    cancelled.cancelled = True
    assert not can_fail_over(cancelled)
    over = flight(failed)
    over.over = True  # the ingress said the client's response ended
    assert not can_fail_over(over)


def test_the_wait_for_the_ingress_outlasts_the_attempts_first_byte_deadline() -> None:
    r = run(deadline_ms=5000.0)  # started at 100.0
    assert delivery_due(r, 101.0, 2.0) == 107.0
    assert delivery_due(r, 110.0, 2.0) == 112.0


def test_the_record_is_the_networks_own_prices_clock_and_count() -> None:
    r = run(report=outcome(10, 5, input_price=7, output_price=7, ttft_ms=0.001, duration_ms=0.001))
    r.end("succeeded", 100.5)
    record, observed = record_of(r, ROUTE, note(ttft_ms=900.0), None, 101.0, WALL, 5000.0)
    assert (record.input_price, record.output_price) == (r.candidate.offer.input_price, r.candidate.offer.output_price)
    assert record.duration_ms == 500.0  # the router's clock, not the hoster's
    assert record.ttft_ms == 500.0  # the ingress's, never past the attempt's duration
    assert (record.prompt_tokens, record.completion_tokens, record.chunks_sent) == (10, 5, 3)
    assert (observed.ttft_ms, observed.duration_ms, observed.completion_tokens) == (500.0, 500.0, 0)


def test_a_registered_models_usage_is_the_lower_of_the_claim_and_our_count() -> None:
    r = run(report=outcome(40, 30))
    counted = note(text_bytes=400)
    counted = counted.model_copy(update={"completion_tokens": 12})
    billed = charge(r, BOUNDS, counted, counted_prompt=20)
    assert billed is not None
    assert (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (20, 12)
    assert "the network counted 20 and 12" in (billed.usage_discrepancy or "")
    # Within the tolerance of our count: billed the claim, nothing flagged.
    honest = charge(run(report=outcome(21, 13)), BOUNDS, counted, counted_prompt=20)
    assert honest is not None
    assert (honest.usage.prompt_tokens, honest.usage.completion_tokens) == (20, 12)
    assert "the network counted" not in (honest.usage_discrepancy or "")
    # An engine that reported no usage (the adapter estimated it): billed our count, not the estimate.
    estimated = run(report=outcome(3, 2).model_copy(update={"usage": Usage(prompt_tokens=3, completion_tokens=2,
                                                                           estimated=True)}))  # fmt: skip
    paid = charge(estimated, BOUNDS, counted, counted_prompt=20)
    assert paid is not None
    assert (paid.usage.prompt_tokens, paid.usage.completion_tokens, paid.usage.estimated) == (20, 12, False)


def test_an_attempt_says_its_usage_was_counted_only_when_both_of_the_networks_counts_held_it() -> None:
    """The routing record's "verified" or "usage not verified" comes from here: the router's prompt count and
    the ingress's completion count, both present."""
    counted = note().model_copy(update={"completion_tokens": 12})
    both = charge(run(report=outcome(20, 12)), BOUNDS, counted, counted_prompt=20)
    assert both is not None
    assert both.usage_counted
    # A model not registered: neither count, the claim held to the byte bounds alone.
    unregistered = charge(run(report=outcome(20, 12)), BOUNDS, note(), counted_prompt=None)
    assert unregistered is not None
    assert not unregistered.usage_counted
    # The router counted the prompt but the ingress could not count the completion (billing away): not verified.
    half = charge(run(report=outcome(20, 12)), BOUNDS, note(), counted_prompt=20)
    assert half is not None
    assert not half.usage_counted
    # Nor the other way round (``auto`` or fallbacks: the router counted no prompt).
    other_half = charge(run(report=outcome(20, 12)), BOUNDS, counted, counted_prompt=None)
    assert other_half is not None
    assert not other_half.usage_counted


def test_speed_is_the_networks_count_over_the_ingresss_clock_held_to_the_models_bound() -> None:
    # 100 tokens, first at 100 ms, last at 600 ms: 200 tokens/s generating (the whole time says at most 166).
    assert speed_of(100, 100.0, 600.0, 5000.0) == (200.0, False)
    # A whole answer (first content is the last): the tokens over the whole time.
    assert speed_of(100, 50.0, 50.0, 5000.0) == (2000.0, False)
    # A first frame sent at once and the rest in one burst: generation looks instant; ranked at the bound.
    assert speed_of(100, 100.0, 100.5, 5000.0) == (5000.0, False)
    # Everything at once, faster than the model's bound even over the whole time: implausible, no speed.
    assert speed_of(100, 1.0, 2.0, 5000.0) == (None, True)
    # The bound is the model's: the same attempt is plausible for a tiny model that really runs that fast.
    assert speed_of(100, 1.0, 2.0, 100_000.0) == (100_000.0, False)
    # Short answers are not timed (the network's time, not the hoster's), and nothing delivered is not either.
    assert speed_of(7, 1.0, 2.0, 5000.0) == (None, False)
    assert speed_of(100, None, None, 5000.0) == (None, False)


def test_the_record_times_a_whole_answer_on_the_ingresss_clock_not_the_hosters() -> None:
    unstreamed = ROUTE.model_copy(update={"stream": False})
    r = run(report=outcome(10, 50, ttft_ms=0.001))
    r.end("succeeded", 100.5)
    counted = note(ttft_ms=200.0).model_copy(update={"last_content_ms": 200.0, "completion_tokens": 50})
    billed = charge(r, BOUNDS, counted, None)
    record, observed = record_of(r, unstreamed, counted, billed, 101.0, WALL, 5000.0)
    assert record.ttft_ms == observed.ttft_ms == 200.0  # the hoster's 0.001 ms would win `fastest`
    assert (observed.tokens_per_s, observed.implausible_speed) == (250.0, False)
    _, instant = record_of(r, unstreamed, counted, billed, 101.0, WALL, 100.0)
    assert (instant.tokens_per_s, instant.implausible_speed) == (None, True)


def test_a_registered_models_claim_past_a_bound_is_flagged_only_past_our_count_too() -> None:
    """llama.cpp generates past ``max_tokens`` to finish a character of several bytes (9 tokens of 8, our
    count of the text agrees), and reports no usage on a stream (the adapter's estimate of a prompt, a quarter
    of its characters, may pass our count): billed at the bounds and our count, and no discrepancy. A claim
    past the bound and past our count is one, and so is any claim past a bound when nothing was counted."""
    bounds = UsageBounds(prompt=48, completion=8)  # our prompt count (44) plus the tolerance; max_tokens 8
    priced = {"input_price": 1, "output_price": 1}  # the dispatch's (``run``)
    counted = note(text_bytes=400).model_copy(update={"completion_tokens": 9})
    overrun = charge(run(report=outcome(44, 9, **priced)), bounds, counted, counted_prompt=44)
    assert overrun is not None
    assert (overrun.usage.prompt_tokens, overrun.usage.completion_tokens) == (44, 8)
    assert overrun.usage_discrepancy is None
    estimate = Usage(prompt_tokens=53, completion_tokens=9, estimated=True)
    estimated = charge(run(report=outcome(53, 9, **priced).model_copy(update={"usage": estimate})), bounds, counted, 44)
    assert estimated is not None
    assert (estimated.usage.prompt_tokens, estimated.usage.completion_tokens) == (44, 8)
    assert estimated.usage_discrepancy is None
    inflated = charge(run(report=outcome(44, 14, **priced)), bounds, counted, counted_prompt=44)
    assert inflated is not None
    assert (inflated.usage.prompt_tokens, inflated.usage.completion_tokens) == (44, 8)
    assert "bounds: 48 prompt, 8 completion" in (inflated.usage_discrepancy or "")
    uncounted = charge(run(report=outcome(44, 9, **priced)), bounds, note(text_bytes=400))
    assert uncounted is not None
    assert "bounds: 48 prompt, 8 completion" in (uncounted.usage_discrepancy or "")
