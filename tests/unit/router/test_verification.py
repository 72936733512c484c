"""The spot check's pure part: what a check sends, how an answer is judged against the reference's, and the
verdict its checks add up to."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from libs.contracts.verification import CheckEvidence
from services.router.covert import COMPLETION_LIMITS, DEFAULT_PROMPTS, PromptPool
from services.router.verification import (
    EVIDENCE_KEPT,
    FAILED,
    MAX_MEAN_DELTA,
    REFERENCE_MAX_TOKENS,
    UNCHECKED,
    VERDICT_MAX_AGE_S,
    VERIFIED,
    CheckPlan,
    Verdict,
    Verifications,
    draw_check,
    evidence_of,
    judge,
    positions_of,
)

POOL = PromptPool.load(DEFAULT_PROMPTS)


def token(text: str, logprob: float, top: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    entry["top_logprobs"] = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (top or [])]
    return entry


def completion(tokens: list[dict[str, Any]] | None, text: str | None = None) -> dict[str, Any]:
    content = text if text is not None else "".join(t["token"] for t in tokens or [])
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    choice["logprobs"] = {"content": tokens} if tokens is not None else None
    return {"object": "chat.completion", "choices": [choice]}


def reference_tokens() -> list[dict[str, Any]]:
    """Three greedy tokens, the second a near tie between " sea" and " sun"."""
    return [
        token("The", -0.5, [("The", -0.5), ("A", -1.5), ("It", -2.0)]),
        token(" sea", -1.00, [(" sea", -1.00), (" sun", -1.02), (" sky", -3.0)]),
        token(" is", -0.3, [(" is", -0.3), (" was", -1.9), (" looks", -2.5)]),
    ]


def plan(shape: Any) -> CheckPlan:
    return CheckPlan(shape, {}, {})


def test_a_check_is_drawn_as_a_client_request_and_the_reference_is_asked_greedily_with_logprobs() -> None:
    rng = random.Random(7)
    shapes = set()
    for _ in range(300):
        check = draw_check("m", POOL, rng)
        shapes.add(check.shape)
        body = check.body
        assert body["model"] == "m"
        assert body["messages"] == check.reference_body["messages"]
        assert ("max_tokens" in body) != ("max_completion_tokens" in body)
        assert not {"allow_hosters", "seed", "user"} & set(body)
        if check.shape == "greedy":
            assert body["temperature"] == 0
            assert "logprobs" not in body
        elif check.shape == "greedy_logprobs":
            assert body["temperature"] == 0
            assert body["logprobs"] is True
        else:
            assert body.get("temperature", 1) != 0
            assert body["logprobs"] is True
        ref = check.reference_body
        assert (ref["temperature"], ref["logprobs"], ref["top_logprobs"]) == (0, True, 5)
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        assert limit in COMPLETION_LIMITS
        assert limit <= 512
        assert ref["max_tokens"] == min(limit, REFERENCE_MAX_TOKENS)
    assert shapes == {"greedy", "greedy_logprobs", "sampled_logprobs"}
    short = {draw_check("m", POOL, rng, max_tokens=64).body.get("max_tokens", 0) for _ in range(200)}
    assert max(short) <= 64


def test_the_same_answer_passes_every_shape() -> None:
    ref = completion(reference_tokens())
    for shape in ("greedy", "greedy_logprobs", "sampled_logprobs"):
        result = judge(plan(shape), ref, ref)
        assert result is not None
        assert result.passed, (shape, result)
        assert result.shared == 3
    logprobs = judge(plan("greedy_logprobs"), ref, ref)
    assert logprobs is not None
    assert logprobs.mean_delta == 0
    assert logprobs.top_overlap == 1


def test_a_greedy_answer_that_leaves_the_reference_at_a_near_tie_passes_elsewhere_fails() -> None:
    ref = completion(reference_tokens())
    tie = completion(None, text="The sun shines")
    far = completion(None, text="The sky is")
    other = completion(None, text="Bananas are yellow")
    tied = judge(plan("greedy"), tie, ref)
    assert tied is not None
    assert tied.passed
    assert tied.shared == 1
    for answer in (far, other):
        result = judge(plan("greedy"), answer, ref)
        assert result is not None
        assert not result.passed
        assert "did not rank near its best" in (result.problem or "")


def test_logprobs_that_differ_past_the_threshold_fail_and_within_it_pass() -> None:
    ref = reference_tokens()

    def shifted(by: float) -> dict[str, Any]:
        moved = []
        for entry in ref:
            top = [(t["token"], t["logprob"] - by) for t in entry["top_logprobs"]]
            moved.append(token(entry["token"], entry["logprob"] - by, top))
        return completion(moved)

    near = judge(plan("greedy_logprobs"), shifted(MAX_MEAN_DELTA / 2), completion(ref))
    assert near is not None
    assert near.passed
    assert near.mean_delta == pytest.approx(MAX_MEAN_DELTA / 2)
    far = judge(plan("greedy_logprobs"), shifted(MAX_MEAN_DELTA * 3), completion(ref))
    assert far is not None
    assert not far.passed


def test_a_sampled_answer_is_compared_up_to_where_it_leaves_the_reference() -> None:
    ref = reference_tokens()
    # Samples " sky" second (not a near tie: fine for a sampled answer), then anything: only the shared
    # context is compared.
    sampled = completion([ref[0], token(" sky", -3.0, [(" sea", -1.0), (" sun", -1.02), (" sky", -3.0)]),
                          token(" glows", -9.0, [(" glows", -9.0)])])  # fmt: skip
    result = judge(plan("sampled_logprobs"), sampled, completion(ref))
    assert result is not None
    assert result.passed
    assert (result.positions, result.shared) == (2, 1)
    # Other weights rank other tokens from the first position on.
    other = completion([token("Bread", -0.2, [("Bread", -0.2), ("Cats", -1.1), ("Why", -2.2)])])
    wrong = judge(plan("sampled_logprobs"), other, completion(ref))
    assert wrong is not None
    assert not wrong.passed


def test_answers_without_usable_logprobs() -> None:
    ref = completion(reference_tokens())
    assert judge(plan("greedy_logprobs"), ref, completion(None, text="The sea")) is None  # says nothing
    missing = judge(plan("greedy_logprobs"), completion(None, text="The sea is"), ref)
    assert missing is not None
    assert not missing.passed
    for bad in (float("nan"), float("inf"), 0.5, True, "0"):
        broken = completion([token("The", -0.5)])
        broken["choices"][0]["logprobs"]["content"][0]["logprob"] = bad
        assert positions_of(broken) is None
    empty = judge(plan("greedy"), completion(None, text=""), ref)
    assert empty is not None
    assert not empty.passed


def evidence(passed: bool, at: float = 1000.0) -> CheckEvidence:
    return CheckEvidence(at=at, shape="greedy", reference="ref", passed=passed, positions=3, shared=3)


def test_the_verdict_fails_a_hoster_failing_every_check_in_three_and_verifies_an_honest_one_in_eight() -> None:
    dishonest, honest = Verdict(), Verdict()
    assert [dishonest.fold(evidence(False)) for _ in range(3)] == [UNCHECKED, UNCHECKED, FAILED]
    assert [honest.fold(evidence(True)) for _ in range(8)][-2:] == [UNCHECKED, VERIFIED]


def test_a_failed_hoster_needs_a_long_run_of_passes_and_one_lapse_does_not_fail_an_honest_one() -> None:
    verdict = Verdict()
    for _ in range(3):
        verdict.fold(evidence(False))
    assert all(verdict.fold(evidence(True)) == FAILED for _ in range(17))
    assert verdict.fold(evidence(True)) == VERIFIED
    # Once verified, a single failed check (the 5% an honest engine on other hardware may fail) changes nothing.
    assert verdict.fold(evidence(False)) == VERIFIED
    assert verdict.fold(evidence(True)) == VERIFIED


def test_a_hoster_failing_two_checks_in_five_is_failed_over_time() -> None:
    rng = random.Random(3)
    verdict = Verdict()
    checks = 0
    while verdict.decided != FAILED and checks < 200:
        checks += 1
        verdict.fold(evidence(rng.random() >= 0.4))
    assert verdict.decided == FAILED
    assert checks < 60


def test_a_verified_verdict_goes_stale_and_references_are_verified_by_designation() -> None:
    table = Verifications()
    for _ in range(8):
        table.fold("h", "m", evidence(True, at=1000.0))
    assert table.of("h", "m", 1000.0) == VERIFIED
    assert table.of("h", "m", 1000.0 + VERDICT_MAX_AGE_S + 1) == UNCHECKED
    assert table.of("x", "m", 1000.0) == UNCHECKED
    table.references = {"m": frozenset({"ref"})}
    assert table.of("ref", "m", 1000.0) == VERIFIED
    assert table.has_reference("m")
    assert not table.has_reference("other")


def test_a_report_says_a_declared_quantization_is_not_confirmed_when_failed_against_a_reference_of_it() -> None:
    table = Verifications()
    for _ in range(3):
        table.fold("h", "m", evidence(False))
    report = table.report("h", "m", 1000.0, "f16", frozenset({"f16"}))
    assert (report.verdict, report.declared, report.confirmed, report.failures) == (FAILED, "f16", False, 3)
    assert table.report("h", "m", 1000.0, "q4", frozenset({"f16"})).confirmed is None  # no q4 reference
    assert table.failed_models("h", 1000.0) == ["m"]


def test_verdicts_are_stored_and_taken_back_and_a_broken_record_is_skipped() -> None:
    table = Verifications()
    for i in range(EVIDENCE_KEPT + 5):
        table.fold("h", "m", evidence(i % 2 == 0))
    stored = table.take_dirty()
    assert list(stored) == ["h|m"]
    assert table.take_dirty() == {}
    again = Verifications()
    assert again.load(stored["h|m"])
    assert again.verdicts[("h", "m")].decided == table.verdicts[("h", "m")].decided
    assert len(again.verdicts[("h", "m")].evidence) == EVIDENCE_KEPT
    for broken in ({}, {**stored["h|m"], "llr": math.nan}, {**stored["h|m"], "decided": "trusted"},
                   {**stored["h|m"], "evidence": [{"at": -1}]}):  # fmt: skip
        assert not Verifications().load(broken)


def test_evidence_rounds_what_it_measured() -> None:
    result = judge(plan("greedy_logprobs"), completion(reference_tokens()), completion(reference_tokens()))
    assert result is not None
    shown = evidence_of(result, "ref", 5.0)
    assert (shown.passed, shown.reference, shown.positions, shown.mean_delta) == (True, "ref", 3, 0.0)


def test_tokens_nobody_can_tell_apart_are_not_compared() -> None:
    # llama.cpp names every partial UTF-8 byte "" (no bytes) and keys its top lists by text: two different
    # tokens of one text, or an empty one, are left out rather than compared with the wrong one.
    ref = [token("The", -0.5, [("The", -0.5), ("", -1.0), ("A", -1.5)]), token("", -0.1, [("", -0.1)])]
    for entry in ref:
        for alternative in entry["top_logprobs"]:
            alternative.pop("bytes")
        entry.pop("bytes")
    mine = [dict(ref[0], top_logprobs=[{"token": "The", "logprob": -0.5}, {"token": "", "logprob": -2.0},
                                       {"token": "A", "logprob": -1.5}]), ref[1]]  # fmt: skip
    result = judge(plan("greedy_logprobs"), completion(mine), completion(ref))
    assert result is not None
    assert result.passed
    assert (result.positions, result.mean_delta) == (1, 0)
    [position] = positions_of(completion([token("x", -1.0, [("x", -1.0), ("y", -2.0), ("y", -3.0)])])) or []
    assert set(position.top) == {b"x"}
    text = judge(plan("greedy"), completion(None, text="The\u00e9"), completion(ref))
    assert text is not None
    assert text.passed
    only_partial = [token("", -0.1)]
    assert judge(plan("greedy_logprobs"), completion(only_partial), completion(only_partial)) is None
    assert judge(plan("greedy"), completion(None, text="\u00e9t\u00e9"), completion(only_partial)) is None
