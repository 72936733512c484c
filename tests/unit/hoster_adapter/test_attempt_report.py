"""How the adapter reports an attempt's end, in memory: what it bills for each way an attempt can end."""

from __future__ import annotations

from typing import Any

from services.hoster_adapter.service import AttemptEnd, StreamTally, attempt_report, deadline_error
from tests.unit.hoster_adapter.test_attempt_logic import chunk, dispatch


def tally_of(*chunks: dict[str, Any]) -> StreamTally:
    tally = StreamTally()
    for c in chunks:
        tally.observe(c)
    return tally


REPORTED = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510}}


def report(stream: bool, end: AttemptEnd, tally: StreamTally) -> Any:
    return attempt_report(dispatch(stream=stream), "h", "a", end, tally, 0.25, 12.0, ["seed"])


def test_a_success_is_reported_as_the_upstream_counted() -> None:
    event = report(True, AttemptEnd("succeeded", sent=4), tally_of(chunk("a"), chunk("b"), REPORTED))
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (10, 500)
    assert (event.chunks_sent, event.ttft_ms, event.dropped_parameters) == (4, 250.0, ["seed"])


def test_a_stream_cut_short_is_billed_for_the_chunks_the_client_got_not_the_upstreams_count() -> None:
    for outcome in ("cancelled", "failed"):
        event = report(True, AttemptEnd(outcome, sent=2), tally_of(chunk("a"), chunk("b"), REPORTED))
        assert event.usage.completion_tokens == 2, outcome


def test_a_failed_answer_the_client_never_got_bills_no_completion() -> None:
    end = AttemptEnd("failed", error="upstream status 500: boom", upstream_status=500)
    event = report(False, end, tally_of(chunk("a"), REPORTED))
    assert event.usage.completion_tokens == 0
    assert (event.error, event.upstream_status, event.client_error) == ("upstream status 500: boom", 500, False)


def test_deadline_errors_say_which_deadline() -> None:
    assert deadline_error(False, True, 5, 600, 30).startswith("attempt_too_long: ")
    assert deadline_error(False, False, 5, 600, 30) == "first_byte_timeout: no chunk from the upstream within 5 s"
    assert deadline_error(True, False, 5, 600, 30) == "stalled: no chunk from the upstream for 30 s"
