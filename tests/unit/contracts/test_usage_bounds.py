"""The bounds a hoster's reported usage is held to before anyone pays on it."""

from __future__ import annotations

from libs.contracts.pricing import TEMPLATE_TOKENS, Cost, UsageBounds
from services.billing.ledger import within


def test_bounds_come_from_the_body_the_completion_limit_and_n() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "n": 3}
    assert UsageBounds.of(body, 100, 4096) == UsageBounds(100 + TEMPLATE_TOKENS, 48)
    assert UsageBounds.of({"max_completion_tokens": 5, "max_tokens": 50}, 10, 4096).completion == 5
    assert UsageBounds.of({}, 10, 4096).completion == 4096


def test_reports_are_clamped_into_the_bounds_and_a_break_is_named() -> None:
    bounds = UsageBounds(prompt=200, completion=16)
    assert bounds.bound(12, 16) == (12, 16, None)
    prompt, completion, why = bounds.bound(12_000, 16_000)
    assert (prompt, completion) == (200, 16)
    assert why is not None
    assert "reported 12000 prompt and 16000 completion" in why
    assert bounds.bound(-5, -1)[:2] == (0, 0)


def test_a_charge_is_scaled_down_to_its_reservation_and_still_splits_exactly() -> None:
    lines = [("h1", Cost(700, 630, 70)), ("h2", Cost(300, 270, 30))]
    assert within(lines, 1000) == lines
    scaled = within(lines, 100)
    assert sum(c.client for _, c in scaled) <= 100
    assert all(c.client == c.hoster + c.fee and c.hoster >= 0 and c.fee >= 0 for _, c in scaled)


def test_choices_count_best_of_and_prompts_only_for_text_completions() -> None:
    from libs.contracts.common import COMPLETIONS
    from libs.contracts.pricing import generated_choices

    body = {"n": 2, "best_of": 100, "prompt": ["a", "b", "c"]}
    assert generated_choices(body) == 2  # a chat body's unknown fields do not grow its reservation
    assert generated_choices(body, COMPLETIONS) == 300
    assert UsageBounds.of(body, 10, 4096).completion == 4096 * 2
    assert UsageBounds.of(body | {"max_tokens": 5}, 10, 4096, COMPLETIONS).completion == 5 * 300
