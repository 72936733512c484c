"""What the console's pages show, from billing's and the routers' replies (pure view models)."""

from __future__ import annotations

import pytest

from libs.contracts.billing import AttemptRecord, GenerationRecord
from libs.contracts.hosters import LiveHoster, LiveModel, ModelOffer
from libs.contracts.management import (
    AccountRequest,
    AccountSummary,
    DailyUsage,
    HosterDay,
    HosterDetail,
    ManagedKey,
    ModelSpeed,
    TrustTerms,
)
from libs.contracts.verification import CheckEvidence, ModelVerification
from services.console import service


@pytest.mark.parametrize(
    ("micro", "shown"),
    [(0, "0"), (1, "0.000001"), (75, "0.000075"), (1_500_000, "1.5"), (100_000_000, "100"),
     (1_234_567_890_123, "1,234,567.890123"), (-2_500_000, "-2.5"), (None, "—")],
)  # fmt: skip
def test_credits_show_every_micro_credit_and_no_trailing_zeros(micro: int | None, shown: str) -> None:
    assert service.credits(micro) == shown


def live_hoster(name: str, models: list[str], live: bool = True, ttft: float | None = None,
                tps: float | None = None, suspicious: list[str] | None = None) -> LiveHoster:  # fmt: skip
    return LiveHoster(hoster_id=f"id-{name}", name=name, live=live, cloud=False, models=models, capacity=8,
                      in_flight=2, trust=0.5, cooling=False, attempts=3, ttft_median_ms=ttft,
                      tokens_per_s=tps, speed_suspicious_models=suspicious or [])  # fmt: skip


def live_model(model_id: str, usage_verified: bool = False) -> LiveModel:
    return LiveModel(id=model_id, hosters=1, min_input_price=1, max_input_price=1, min_output_price=2,
                     max_output_price=2, context_length=None, first_seen=0, usage_verified=usage_verified)  # fmt: skip


def test_the_network_page_gives_each_model_its_price_range_and_the_median_speed_of_its_live_hosters() -> None:
    model = LiveModel(id="m", hosters=3, min_input_price=400_000, max_input_price=500_000, min_output_price=1_200_000,
                      max_output_price=1_200_000, context_length=8192, first_seen=0)  # fmt: skip
    hosters = [
        live_hoster("a", ["m"], ttft=100, tps=40),
        live_hoster("b", ["m"], ttft=300, tps=60),
        live_hoster("c", ["m"], ttft=None, tps=None),  # not measured yet: left out of the medians
        live_hoster("gone", ["m"], live=False, ttft=5000, tps=1),  # offline: left out
        live_hoster("other", ["n"], ttft=9000, tps=1),  # serves another model
    ]
    view = service.network_view([model], hosters)
    [row] = view.models
    assert (row.model, row.hosters, row.input_prices, row.output_prices) == ("m", 3, "0.4 to 0.5", "1.2")
    assert (row.context_length, row.ttft, row.tokens_per_s) == ("8,192", "200 ms", "50.0")
    # Live hosters first, each with its own figures.
    assert [h.name for h in view.hosters] == ["a", "b", "c", "other", "gone"]
    assert (view.hosters[0].ttft, view.hosters[0].tokens_per_s, view.hosters[0].load) == ("100 ms", "40.0", "2/8")
    assert (view.hosters[2].ttft, view.hosters[2].tokens_per_s) == ("—", "—")


def test_a_model_no_hoster_measured_yet_shows_no_speed() -> None:
    model = LiveModel(id="m", hosters=1, min_input_price=1, max_input_price=1, min_output_price=2,
                      max_output_price=2, context_length=None, first_seen=0)  # fmt: skip
    [row] = service.network_view([model], [live_hoster("a", ["m"])]).models
    assert (row.ttft, row.tokens_per_s, row.context_length) == ("—", "—", "—")


def test_the_network_page_says_which_models_usage_is_verified() -> None:
    rows = service.network_view([live_model("counted", usage_verified=True), live_model("claimed")], []).models
    assert [(r.model, r.usage, r.usage_verified) for r in rows] == [
        ("claimed", "usage not verified", False), ("counted", "verified", True)
    ]  # fmt: skip


def test_a_speed_the_router_does_not_believe_is_not_shown_as_measured() -> None:
    """A hoster measured implausibly fast lately (on any of its models) shows "not believed", not its figures,
    and they are in no model's medians; a model only such hosters serve shows "not believed" too."""
    hosters = [
        live_hoster("honest", ["m"], ttft=200, tps=40),
        live_hoster("instant", ["m", "n"], ttft=1, tps=90_000, suspicious=["m"]),
        live_hoster("elsewhere", ["n"], ttft=300, tps=30),
    ]
    view = service.network_view([live_model("m"), live_model("n"), live_model("o")], hosters)
    by_name = {h.name: h for h in view.hosters}
    assert (by_name["instant"].ttft, by_name["instant"].tokens_per_s, by_name["instant"].speed_believed) == (
        "not believed", "not believed", False
    )  # fmt: skip
    assert (by_name["honest"].ttft, by_name["honest"].tokens_per_s, by_name["honest"].speed_believed) == (
        "200 ms", "40.0", True
    )  # fmt: skip
    m, n, o = view.models
    assert (m.ttft, m.tokens_per_s) == ("200 ms", "40.0")  # the instant hoster is left out
    assert (n.ttft, n.tokens_per_s) == ("300 ms", "30.0")  # its figures are over all its models: left out too
    assert (o.ttft, o.tokens_per_s) == ("—", "—")  # nobody serves it: nothing measured, nothing doubted
    [only] = service.network_view([live_model("m")], [hosters[1]]).models
    assert (only.ttft, only.tokens_per_s, only.speed_believed) == ("not believed", "not believed", False)
    assert m.speed_believed


def test_the_spend_chart_has_a_bar_per_day_in_credits_and_a_token_line_on_the_right_axis() -> None:
    days = [DailyUsage(day="2026-11-28", requests=0, prompt_tokens=0, completion_tokens=0, spend=0),
            DailyUsage(day="2026-11-29", requests=2, prompt_tokens=30, completion_tokens=12, spend=1_250)]  # fmt: skip
    chart = service.spend_chart(days)
    assert chart["labels"] == ["2026-11-28", "2026-11-29"]
    spend, tokens = chart["series"]
    assert (spend["kind"], spend["axis"], spend["data"]) == ("bar", "left", [0.0, 0.00125])
    assert (tokens["kind"], tokens["axis"], tokens["data"]) == ("line", "right", [0.0, 42.0])


def test_the_hoster_charts_stack_outcomes_and_show_earnings_in_credits() -> None:
    days = [HosterDay(day="2026-11-29", attempts=5, succeeded=3, failed=1, prompt_tokens=1, completion_tokens=1,
                      earned=2_000_000)]  # fmt: skip
    requests = service.hoster_requests_chart(days)
    assert [(s["label"], s["data"], s["stack"]) for s in requests["series"]] == [
        ("Succeeded", [3.0], "attempts"), ("Failed", [1.0], "attempts"), ("Cancelled", [1.0], "attempts")
    ]  # fmt: skip
    assert service.earnings_chart(days)["series"][0]["data"] == [2.0]
    # No cancelled attempt: no empty series.
    days[0].attempts = 4
    assert [s["label"] for s in service.hoster_requests_chart(days)["series"]] == ["Succeeded", "Failed"]


def test_the_account_shows_what_is_left_of_its_daily_cap() -> None:
    summary = AccountSummary(account_id="a", name="demo", balance=99_500_000, reserved=10, daily_cap=5_000_000,
                             spent_today=1_250_000, created_at=0)  # fmt: skip
    view = service.account_view(summary)
    assert (view.balance, view.daily_cap, view.spent_today, view.left_today) == ("99.5", "5", "1.25", "3.75")
    summary.daily_cap, summary.spent_today = 1_000_000, 2_000_000
    assert service.account_view(summary).left_today == "0"
    summary.daily_cap = None
    assert service.account_view(summary).daily_cap == service.account_view(summary).left_today == "no cap"


def test_a_request_row_names_its_hoster_and_falls_back_to_the_money_status() -> None:
    item = AccountRequest(request_id="r1", key_id="k", model="m", status="settled", outcome="succeeded",
                          hoster_id="h1", attempts=1, prompt_tokens=10, completion_tokens=5, cost=75,
                          ttft_ms=151.4, duration_ms=900.0, created_at=0)  # fmt: skip
    [row] = service.request_rows([item], {"h1": "gpu-box"})
    assert row.short_id == "r1"
    assert service.short_id("chatcmpl-" + "a" * 32) == "chatcmpl-aaaaaaaaaaa…"
    assert (row.hoster, row.cost, row.ttft, row.duration, row.outcome) == ("gpu-box", "0.000075", "151 ms", "900 ms",
                                                                          "succeeded")  # fmt: skip
    item.outcome, item.hoster_id, item.status = None, "h2", "open"
    [row] = service.request_rows([item], {})
    assert (row.hoster, row.outcome) == ("h2", "open")


def test_the_routing_record_lists_every_attempt() -> None:
    record = GenerationRecord(id="r1", model="m", status="settled", created=0, prompt_tokens=10, completion_tokens=5,
                              cost=0.000075, attempts=[
        AttemptRecord(attempt=1, hoster_id="h1", model="m", outcome="failed", prompt_tokens=0, completion_tokens=0,
                      ttft_ms=None, duration_ms=12, error="upstream 500"),
        AttemptRecord(attempt=2, hoster_id="h2", model="m", outcome="succeeded", prompt_tokens=10, completion_tokens=5,
                      ttft_ms=100, duration_ms=400, dropped_parameters=["seed"]),
    ])  # fmt: skip
    view = service.generation_view(record, {"h1": "first", "h2": "second"})
    assert view.cost == "0.000075"
    assert [(a.hoster, a.outcome, a.error, a.dropped_parameters) for a in view.attempts] == [
        ("first", "failed", "upstream 500", "—"), ("second", "succeeded", "—", "seed")
    ]  # fmt: skip
    assert view.usage == "—"  # the record does not say (settled before the network did)


@pytest.mark.parametrize(
    ("verified", "shown"), [(True, "verified"), (False, "usage not verified"), (None, "—")]
)  # fmt: skip
def test_the_routing_record_says_whether_its_usage_was_the_networks_count(verified: bool | None, shown: str) -> None:
    record = GenerationRecord(id="r1", model="m", status="settled", created=0, prompt_tokens=10, completion_tokens=5,
                              cost=0.000075, usage_verified=verified, attempts=[])  # fmt: skip
    view = service.generation_view(record, {})
    assert (view.usage, view.usage_verified) == (shown, verified)


def test_only_active_inference_keys_can_be_revoked_here() -> None:
    keys = [
        ManagedKey(key_id="1", prefix="ngk_aaaa…", kind="inference", rpm=60, created_at=0, last_used_at=10),
        ManagedKey(key_id="2", prefix="ngk_bbbb…", kind="inference", created_at=0, revoked_at=20),
        ManagedKey(key_id="3", prefix="ngk_cccc…", kind="management", created_at=0),
    ]
    rows = service.key_rows(keys)
    assert [r.revocable for r in rows] == [True, False, False]
    assert rows[0].limits == "60 requests/min"
    assert rows[2].limits == "none"
    assert rows[1].last_used == "never"
    assert rows[0].last_used == "1970-01-01 00:00:10 UTC"
    assert rows[1].status.startswith("revoked")


@pytest.mark.parametrize(("text", "value"), [(None, None), ("", None), ("  ", None), ("60", 60), ("100,000", 100_000)])
def test_a_limit_typed_into_the_form_is_blank_or_a_whole_number(text: str | None, value: int | None) -> None:
    assert service.optional_limit(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "lots", str(2**31)])
def test_a_limit_outside_the_range_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        service.optional_limit(text)


def test_the_hoster_page_shows_each_trust_term_with_its_counts() -> None:
    trust = TrustTerms(score=0.42, reliability=0.9, midstream=0.05, latency=0.8, history=0.3, dishonesty=0.01,
                       window_attempts=40, window_successes=37, window_midstream_failures=2, window_discrepancies=1,
                       lifetime_attempts=40, age_s=7200, advertised_ttft_ms=200, observed_p95_ttft_ms=250)  # fmt: skip
    offer = ModelOffer(model="m", upstream_model="up", input_price=400_000, output_price=1_200_000)
    detail = HosterDetail(hoster_id="h", name="gpu", live=True, cloud=False, capacity=8, in_flight=1, cooling=False,
                          models=[offer], speed=[ModelSpeed(model="m", ttft_median_ms=180, tokens_per_s=55.5,
                                                            samples=9)],
                          trust=trust, attempts=40, usage_discrepancies=1)  # fmt: skip
    view = service.hoster_view(detail)
    assert (view.status, view.load, view.trust_score) == ("live", "1 of 8", "0.420")
    assert [t.name for t in view.trust_terms] == ["reliability", "midstream failures", "latency", "history",
                                                  "dishonesty"]  # fmt: skip
    assert "(37 successes + 1) / (40 attempts + 2)" in view.trust_terms[0].detail
    assert view.trust_terms[2].detail == "advertised 200 ms / observed p95 250 ms"
    [row] = view.offers
    assert (row.input_price, row.output_price, row.ttft_median, row.tokens_per_s, row.samples) == (
        "0.4", "1.2", "180 ms", "55.5", 9
    )  # fmt: skip
    detail.cooling = True
    assert service.hoster_view(detail).status == "live, cooling down after failures"


def test_the_hoster_page_shows_implausible_speeds_and_which_models_speed_is_not_believed() -> None:
    trust = TrustTerms(score=0.5, reliability=1, midstream=0, latency=1, history=0.5, dishonesty=0,
                       window_attempts=30, window_successes=30, window_midstream_failures=0, window_discrepancies=0,
                       lifetime_attempts=30, age_s=60)  # fmt: skip
    offers = [ModelOffer(model=m, upstream_model=m, input_price=1, output_price=2) for m in ("a", "b", "c")]
    speed = [
        ModelSpeed(model="a", ttft_median_ms=100, tokens_per_s=50, samples=9, implausible_speeds=2, suspicious=True),
        ModelSpeed(model="b", ttft_median_ms=100, tokens_per_s=50, samples=9, implausible_speeds=1),  # long ago
    ]
    detail = HosterDetail(hoster_id="h", name="gpu", live=True, cloud=False, cooling=False, models=offers,
                          speed=speed, trust=trust, attempts=30, implausible_speeds=3)  # fmt: skip
    view = service.hoster_view(detail)
    assert view.implausible_speeds == 3
    assert [(o.model, o.speed, o.speed_believed, o.implausible_speeds) for o in view.offers] == [
        ("a", "not believed", False, 2), ("b", "believed", True, 1), ("c", "—", True, 0)
    ]  # fmt: skip


def test_the_revoked_notice_names_only_a_revoked_key_of_the_account() -> None:
    """``/console/keys?revoked=...`` is anyone's to write: the page names a key only if the account has it
    revoked."""
    keys = [
        ManagedKey(key_id="k1", prefix="ngk_abcd…", kind="inference", created_at=0, revoked_at=10),
        ManagedKey(key_id="k2", prefix="ngk_efgh…", kind="inference", created_at=0),
    ]
    assert service.revoked_notice(keys, "ngk_abcd…") == "ngk_abcd…"
    assert service.revoked_notice(keys, "ngk_efgh…") is None  # not revoked
    assert service.revoked_notice(keys, "Your account is suspended: call +1 555 0100") is None
    assert service.revoked_notice(keys, None) is None
    assert service.revoked_notice(keys, "") is None


def test_the_network_page_says_how_many_hosters_of_each_model_are_verified_and_each_hosters_verdicts() -> None:
    model = LiveModel(id="m", hosters=3, min_input_price=1, max_input_price=1, min_output_price=2, max_output_price=2,
                      context_length=None, first_seen=0, verified_hosters=2, has_reference=True)  # fmt: skip
    one = live_hoster("one", ["m"])
    one.verifications = {"m": "failed"}
    several = live_hoster("several", ["m", "n", "o"])
    several.verifications = {"m": "verified", "n": "failed"}  # "o" never checked
    view = service.network_view([model, live_model("n")], [one, several, live_hoster("new", [])])
    assert [(r.model, r.verified_hosters, r.reference) for r in view.models] == [("m", 2, "yes"), ("n", 0, "no")]
    rows = {h.name: h.verifications for h in view.hosters}
    assert rows["one"] == [service.VerdictCell("failed", True)]  # one model: its verdict alone
    assert rows["several"] == [service.VerdictCell("m: verified", False), service.VerdictCell("n: failed", True),
                               service.VerdictCell("o: unchecked", False)]  # fmt: skip
    assert rows["new"] == []


def test_each_attempt_of_the_routing_record_shows_its_hosters_verdict() -> None:
    attempts = [AttemptRecord(attempt=i, hoster_id="h", model="m", outcome="failed", prompt_tokens=0,
                              completion_tokens=0, ttft_ms=None, duration_ms=1, verification=v)
                for i, v in enumerate(["failed", "verified", None], start=1)]  # fmt: skip
    record = GenerationRecord(id="r1", model="m", status="settled", created=0, prompt_tokens=0, completion_tokens=0,
                              cost=0, attempts=attempts)  # fmt: skip
    view = service.generation_view(record, {})
    assert [(a.verification, a.verification_failed) for a in view.attempts] == [
        ("failed", True), ("verified", False), ("—", False)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("declared", "confirmed", "shown"),
    [("f16", True, "declared f16, confirmed"), ("f16", False, "declared f16, not confirmed"),
     ("q4", None, "declared q4"), (None, None, "none declared")],
)  # fmt: skip
def test_a_declared_quantization_is_said_confirmed_or_not(declared: str | None, confirmed: bool | None,
                                                          shown: str) -> None:  # fmt: skip
    assert service.quantization_text(declared, confirmed) == shown


def test_the_hoster_page_shows_each_models_verdict_and_the_evidence_of_its_recent_checks_newest_first() -> None:
    trust = TrustTerms(score=0.5, reliability=1, midstream=0, latency=1, history=0.5, dishonesty=0.5,
                       window_attempts=3, window_successes=3, window_midstream_failures=0, window_discrepancies=0,
                       lifetime_attempts=3, age_s=60)  # fmt: skip
    failing = [
        CheckEvidence(at=100, shape="greedy", reference="ref-id", passed=False, positions=4, shared=3,
                      problem="greedy token 4 is one the reference did not rank near its best"),
        CheckEvidence(at=300, shape="sampled_logprobs", reference="unknown-id", passed=False, positions=16,
                      shared=16, mean_delta=0.91234, top_overlap=0.25, problem="only 25% of the reference's top"),
    ]  # fmt: skip
    passing = CheckEvidence(at=200, shape="greedy_logprobs", reference="ref-id", passed=True, positions=16, shared=16,
                            mean_delta=0.00012, top_overlap=1.0)  # fmt: skip
    detail = HosterDetail(hoster_id="h", name="gpu", live=True, cloud=False, cooling=True, models=[], speed=[],
                          trust=trust, attempts=3, verifications=[
        ModelVerification(model="z", verdict="verified", checks=1, failures=0, last_checked=200, declared="f16",
                          confirmed=True, evidence=[passing]),
        ModelVerification(model="a", verdict="failed", checks=2, failures=2, last_checked=300, declared="f16",
                          confirmed=False, evidence=failing),
        ModelVerification(model="new", verdict="unchecked"),
    ])  # fmt: skip
    view = service.hoster_view(detail, {"ref-id": "reference-box"})
    assert [(v.model, v.verdict, v.failed, v.checks, v.failures, v.last_checked, v.quantization)
            for v in view.verifications] == [
        ("a", "failed", True, 2, 2, "1970-01-01 00:05:00 UTC", "declared f16, not confirmed"),
        ("new", "unchecked", False, 0, 0, "never", "none declared"),
        ("z", "verified", False, 1, 0, "1970-01-01 00:03:20 UTC", "declared f16, confirmed"),
    ]  # fmt: skip
    assert [(e.model, e.at, e.shape, e.reference, e.result, e.passed, e.positions, e.shared, e.mean_delta,
             e.top_overlap) for e in view.evidence] == [
        ("a", "1970-01-01 00:05:00 UTC", "sampled logprobs", "unknown-id", "failed", False, 16, 16, "0.9123", "25%"),
        ("z", "1970-01-01 00:03:20 UTC", "greedy logprobs", "reference-box", "passed", True, 16, 16, "0.0001", "100%"),
        ("a", "1970-01-01 00:01:40 UTC", "greedy", "reference-box", "failed", False, 4, 3, "—", "—"),
    ]  # fmt: skip
    assert view.evidence[2].problem.startswith("greedy token 4")
    assert view.evidence[1].problem == "—"
