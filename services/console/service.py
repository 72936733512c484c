"""What the console's pages show, built from the replies of billing and the routers: plain data, no I/O.

Amounts arrive in micro-credits and prices in micro-credits per million tokens; pages show credits.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from libs.contracts.billing import GenerationRecord
from libs.contracts.hosters import LiveHoster, LiveModel
from libs.contracts.management import (
    AccountRequest,
    AccountSummary,
    DailyUsage,
    HosterAttempt,
    HosterDay,
    HosterDetail,
    ManagedKey,
    TrustTerms,
)
from libs.contracts.pricing import MICRO
from libs.contracts.verification import CheckEvidence, ModelVerification

DASH = "—"
# A request's or a model's usage: counted by the network with the model's registered tokenizer, or the
# hosters' claims held to byte bounds only.
USAGE_VERIFIED = "verified"
USAGE_NOT_VERIFIED = "usage not verified"
# A speed the router does not believe now (measured past the model's plausibility bound lately).
SPEED_NOT_BELIEVED = "not believed"
# A hoster's spot check verdict on a model it serves (``libs.contracts.verification``): the one to mark.
VERDICT_FAILED = "failed"
VERDICT_UNCHECKED = "unchecked"


def credits(micro: int | None) -> str:
    """An amount of micro-credits in credits, every micro-credit shown, no trailing zeros: ``0.000075``."""
    if micro is None:
        return DASH
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    text = f"{whole:,}"
    if frac:
        text += "." + f"{frac:06d}".rstrip("0")
    return sign + text


def price(micro_per_million: int) -> str:
    """A price per million tokens, in credits."""
    return credits(micro_per_million)


def price_range(low: int, high: int) -> str:
    """``low to high`` credits per million tokens, or one price when all agree."""
    return price(low) if low == high else f"{price(low)} to {price(high)}"


def milliseconds(value: float | None) -> str:
    """A duration in whole milliseconds."""
    return DASH if value is None else f"{value:,.0f} ms"


def rate(value: float | None) -> str:
    """Tokens per second."""
    return DASH if value is None else f"{value:,.1f}"


def share(value: float | None) -> str:
    """A fraction in [0, 1] with three decimals."""
    return DASH if value is None else f"{value:.3f}"


def timestamp(unix_s: float | None) -> str:
    """A Unix time as UTC, to the second."""
    if unix_s is None:
        return DASH
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def usage_text(verified: bool | None) -> str:
    """Whether usage is the network's count (``verified``) or not (``usage not verified``); ``—``: not known."""
    if verified is None:
        return DASH
    return USAGE_VERIFIED if verified else USAGE_NOT_VERIFIED


def median(values: Iterable[float | None]) -> float | None:
    """The median of the known values (``None`` when none is known)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass
class VerdictCell:
    """A spot check verdict as a table shows it (``text``: the verdict, after its model's name when the
    hoster serves several; ``failed``: marked as a warning)."""

    text: str
    failed: bool


def verdict_cells(models: Iterable[str], verdicts: dict[str, str]) -> list[VerdictCell]:
    """A hoster's verdict per model it serves (``unchecked`` where the router has none); named by model
    when it serves more than one."""
    served = sorted(set(models) | set(verdicts))
    cells = []
    for model in served:
        verdict = verdicts.get(model, VERDICT_UNCHECKED)
        cells.append(VerdictCell(verdict if len(served) == 1 else f"{model}: {verdict}", verdict == VERDICT_FAILED))
    return cells


# --- the public network page ---------------------------------------------------------------------------


@dataclass
class NetworkModelRow:
    """One live model on the network page."""

    model: str
    hosters: int
    input_prices: str
    output_prices: str
    context_length: str
    endpoints: str
    ttft: str
    tokens_per_s: str
    speed_believed: bool
    usage: str
    usage_verified: bool
    verified_hosters: int
    reference: str


@dataclass
class NetworkHosterRow:
    """One hoster on the network page (``speed_believed``: its figures are shown as measured)."""

    name: str
    hoster_id: str
    live: bool
    kind: str
    region: str
    models: str
    trust: str
    load: str
    ttft: str
    tokens_per_s: str
    speed_believed: bool
    verifications: list[VerdictCell]


@dataclass
class NetworkView:
    """The network page: live models, then every hoster."""

    models: list[NetworkModelRow]
    hosters: list[NetworkHosterRow]


def network_view(models: list[LiveModel], hosters: list[LiveHoster]) -> NetworkView:
    """The network page from the routers' listings. A model's time to first token and tokens per second are
    the medians over the live hosters serving it of each hoster's own figures (its median time to first
    token, its tokens per second), so one busy hoster does not stand for the network. A hoster the router
    does not believe the speed of now, on any of its models (measured implausibly fast lately), shows "not
    believed" instead of its figures, and its figures (over all its models) are in no model's medians; a
    model served only by such hosters shows "not believed" too. A model's usage is "verified" when it is
    registered with its tokenizer (the network counts its tokens), else "usage not verified". Each model says
    how many of its live hosters its spot checks verified and whether it has a reference hoster (what they are
    compared with); each hoster, its verdict on each model it serves."""
    live_hosters = [h for h in hosters if h.live]
    model_rows = []
    for model in sorted(models, key=lambda m: m.id):
        serving = [h for h in live_hosters if model.id in h.models]
        believed = [h for h in serving if not h.speed_suspicious_models]
        ttft, tps = median(h.ttft_median_ms for h in believed), median(h.tokens_per_s for h in believed)
        # Only hosters it does not believe measured it: their figures are not shown as the model's.
        doubted = ttft is None and tps is None and len(believed) < len(serving)
        model_rows.append(
            NetworkModelRow(
                model=model.id,
                hosters=model.hosters,
                input_prices=price_range(model.min_input_price, model.max_input_price),
                output_prices=price_range(model.min_output_price, model.max_output_price),
                context_length=f"{model.context_length:,}" if model.context_length else DASH,
                endpoints=", ".join(model.endpoints),
                ttft=SPEED_NOT_BELIEVED if doubted else milliseconds(ttft),
                tokens_per_s=SPEED_NOT_BELIEVED if doubted else rate(tps),
                speed_believed=not doubted,
                usage=usage_text(model.usage_verified),
                usage_verified=model.usage_verified,
                verified_hosters=model.verified_hosters,
                reference="yes" if model.has_reference else "no",
            )
        )
    hoster_rows = [
        NetworkHosterRow(
            name=hoster.name,
            hoster_id=hoster.hoster_id,
            live=hoster.live,
            kind="cloud" if hoster.cloud else "community",
            region=hoster.region or DASH,
            models=", ".join(sorted(hoster.models)) or DASH,
            trust=share(hoster.trust),
            load=f"{hoster.in_flight or 0}/{hoster.capacity}" if hoster.capacity else DASH,
            ttft=milliseconds(hoster.ttft_median_ms) if not hoster.speed_suspicious_models else SPEED_NOT_BELIEVED,
            tokens_per_s=rate(hoster.tokens_per_s) if not hoster.speed_suspicious_models else SPEED_NOT_BELIEVED,
            speed_believed=not hoster.speed_suspicious_models,
            verifications=verdict_cells(hoster.models, dict(hoster.verifications)),
        )
        for hoster in sorted(hosters, key=lambda h: (not h.live, h.name))
    ]
    return NetworkView(models=model_rows, hosters=hoster_rows)


# --- charts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series of a chart: drawn as ``kind`` (``bar`` or ``line``) against the ``left`` or ``right`` axis;
    bars of one ``stack`` pile up."""

    label: str
    data: list[float]
    kind: str = "bar"
    axis: str = "left"
    stack: str | None = None


def chart(title: str, labels: list[str], *series: Series, left: str = "", right: str = "") -> dict[str, Any]:
    """A chart's data for the page's script (``static/console.js`` hands it to Chart.js): a title (its
    accessible name too), day labels, series, and the titles of the left and right axes."""
    return {
        "title": title,
        "labels": labels,
        "axes": {"left": left, "right": right},
        "series": [
            {"label": s.label, "data": s.data, "kind": s.kind, "axis": s.axis, "stack": s.stack} for s in series
        ],
    }


def spend_chart(days: list[DailyUsage]) -> dict[str, Any]:
    """An account's spend (credits, bars) and tokens (a line on the right axis) per UTC day."""
    return chart(
        "Spend and tokens per day",
        [d.day for d in days],
        Series("Spend (credits)", [d.spend / MICRO for d in days]),
        Series("Tokens", [float(d.prompt_tokens + d.completion_tokens) for d in days], kind="line", axis="right"),
        left="credits",
        right="tokens",
    )


def hoster_requests_chart(days: list[HosterDay]) -> dict[str, Any]:
    """A hoster's attempts per UTC day, succeeded and failed stacked."""
    others = [float(d.attempts - d.succeeded - d.failed) for d in days]
    series = [
        Series("Succeeded", [float(d.succeeded) for d in days], stack="attempts"),
        Series("Failed", [float(d.failed) for d in days], stack="attempts"),
    ]
    if any(others):
        series.append(Series("Cancelled", others, stack="attempts"))
    return chart("Requests per day", [d.day for d in days], *series, left="attempts")


def earnings_chart(days: list[HosterDay]) -> dict[str, Any]:
    """What a hoster earned per UTC day, in credits."""
    return chart(
        "Earnings per day", [d.day for d in days], Series("Earned (credits)", [d.earned / MICRO for d in days])
    )


# --- an account ------------------------------------------------------------------------------------------


@dataclass
class AccountView:
    """The account's money now."""

    name: str
    balance: str
    reserved: str
    daily_cap: str
    spent_today: str
    left_today: str


def account_view(summary: AccountSummary) -> AccountView:
    """The account summary in credits; what is left today is the cap less today's spend (or no cap)."""
    left = None if summary.daily_cap is None else max(0, summary.daily_cap - summary.spent_today)
    return AccountView(
        name=summary.name,
        balance=credits(summary.balance),
        reserved=credits(summary.reserved),
        daily_cap="no cap" if summary.daily_cap is None else credits(summary.daily_cap),
        spent_today=credits(summary.spent_today),
        left_today="no cap" if left is None else credits(left),
    )


@dataclass
class RequestRow:
    """One request in the recent requests table (``short_id``: what the table shows of the id)."""

    request_id: str
    short_id: str
    created: str
    api: str
    model: str
    hoster: str
    prompt_tokens: int
    completion_tokens: int
    cost: str
    ttft: str
    duration: str
    outcome: str


def hoster_label(hoster_id: str | None, names: dict[str, str]) -> str:
    """A hoster's name when a router knows it, else its id."""
    if hoster_id is None:
        return DASH
    return names.get(hoster_id, hoster_id)


def short_id(request_id: str) -> str:
    """The start of a request id, enough to tell requests apart in a table (the link carries the whole id)."""
    return request_id if len(request_id) <= 21 else request_id[:20] + "…"


def request_rows(items: list[AccountRequest], names: dict[str, str]) -> list[RequestRow]:
    """The recent requests table; the outcome is the last attempt's, else where the money stands."""
    return [
        RequestRow(
            request_id=item.request_id,
            short_id=short_id(item.request_id),
            created=timestamp(item.created_at),
            api=item.endpoint,
            model=item.model or DASH,
            hoster=hoster_label(item.hoster_id, names),
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            cost=credits(item.cost),
            ttft=milliseconds(item.ttft_ms),
            duration=milliseconds(item.duration_ms),
            outcome=item.outcome or item.status,
        )
        for item in items
    ]


@dataclass
class AttemptRow:
    """One attempt of a routing record."""

    attempt: int
    hoster: str
    model: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    ttft: str
    duration: str
    error: str
    dropped_parameters: str
    verification: str
    verification_failed: bool


@dataclass
class GenerationView:
    """A request's routing record (``usage``: whether what it was billed was the network's count)."""

    request_id: str
    model: str
    endpoint: str
    status: str
    created: str
    prompt_tokens: int
    completion_tokens: int
    cost: str
    usage_discrepancy: str | None
    usage: str
    usage_verified: bool | None
    attempts: list[AttemptRow]


def generation_view(record: GenerationRecord, names: dict[str, str]) -> GenerationView:
    """The routing record: each attempt's hoster, outcome, times and tokens, its hoster's spot check verdict
    on the model when it ended (``—``: recorded before verdicts were), what the request cost, and whether its
    usage was verified (the network's count) or not (the hoster's claim held to byte bounds)."""
    return GenerationView(
        request_id=record.id,
        model=record.model or DASH,
        endpoint=record.endpoint,
        status=record.status,
        created=timestamp(record.created),
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cost=credits(round(record.cost * MICRO)),
        usage_discrepancy=record.usage_discrepancy,
        usage=usage_text(record.usage_verified),
        usage_verified=record.usage_verified,
        attempts=[
            AttemptRow(
                attempt=a.attempt,
                hoster=hoster_label(a.hoster_id, names),
                model=a.model,
                outcome=a.outcome,
                prompt_tokens=a.prompt_tokens,
                completion_tokens=a.completion_tokens,
                ttft=milliseconds(a.ttft_ms),
                duration=milliseconds(a.duration_ms),
                error=a.error or DASH,
                dropped_parameters=", ".join(a.dropped_parameters) or DASH,
                verification=a.verification or DASH,
                verification_failed=a.verification == VERDICT_FAILED,
            )
            for a in record.attempts
        ],
    )


@dataclass
class KeyRow:
    """One key in the keys table."""

    key_id: str
    prefix: str
    label: str
    kind: str
    limits: str
    created: str
    last_used: str
    status: str
    revocable: bool


def limits_text(rpm: int | None, tpm: int | None) -> str:
    """A key's rate limits, or that it has none."""
    parts = [*([f"{rpm:,} requests/min"] if rpm else []), *([f"{tpm:,} tokens/min"] if tpm else [])]
    return ", ".join(parts) or "none"


def key_rows(keys: list[ManagedKey]) -> list[KeyRow]:
    """The keys table. Only inference keys are revoked here: management keys are the operator's to issue
    and revoke (the console signs in with one)."""
    return [
        KeyRow(
            key_id=key.key_id,
            prefix=key.prefix,
            label=key.label or DASH,
            kind=key.kind,
            limits=limits_text(key.rpm, key.tpm),
            created=timestamp(key.created_at),
            last_used="never" if key.last_used_at is None else timestamp(key.last_used_at),
            status="active" if key.revoked_at is None else f"revoked {timestamp(key.revoked_at)}",
            revocable=key.revoked_at is None and key.kind == "inference",
        )
        for key in keys
    ]


def revoked_notice(keys: list[ManagedKey], prefix: str | None) -> str | None:
    """The key prefix the "revoked" notice names (``/console/keys?revoked=...``, where a revoke redirects), only
    when it is the prefix of one of these keys that is revoked: the address is anyone's to write, so no text of
    its own reaches the page."""
    if not prefix:
        return None
    revoked = any(key.prefix == prefix and key.revoked_at is not None for key in keys)
    return prefix if revoked else None


def optional_limit(text: str | None) -> int | None:
    """A limit typed into a form: blank is none; otherwise a whole number from 1 (``ValueError`` if not)."""
    text = (text or "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    value = int(text)
    if value < 1 or value > 2**31 - 1:
        raise ValueError(f"{value} is out of range")
    return value


# --- a hoster --------------------------------------------------------------------------------------------


@dataclass
class OfferRow:
    """One model a hoster serves, its prices and its speed: ``speed`` says whether the router believes it now
    (``not believed``: measured past the model's plausibility bound lately, so routing ranks it as slow)."""

    model: str
    upstream_model: str
    input_price: str
    output_price: str
    context_length: str
    endpoints: str
    ttft_median: str
    ttft_p95: str
    tokens_per_s: str
    samples: int
    speed: str
    speed_believed: bool
    implausible_speeds: int


@dataclass
class TrustTerm:
    """One term of the trust score: its value, what it is made of, and how it enters the score."""

    name: str
    value: str
    detail: str
    role: str


@dataclass
class VerificationRow:
    """A hoster's spot check verdict on one model: its checks, failures, last check, and whether the
    quantization it declares was borne out."""

    model: str
    verdict: str
    failed: bool
    checks: int
    failures: int
    last_checked: str
    quantization: str
    quantization_confirmed: bool | None


@dataclass
class EvidenceRow:
    """One judged spot check: what was compared with whom, what was measured, passed or failed."""

    model: str
    at: str
    shape: str
    reference: str
    result: str
    passed: bool
    positions: int
    shared: int
    mean_delta: str
    top_overlap: str
    problem: str


def quantization_text(declared: str | None, confirmed: bool | None) -> str:
    """What the checks say of a declared quantization: ``declared f16, confirmed`` (a reference declaring the
    same agreed), ``declared f16, not confirmed`` (it failed against one), ``declared f16`` (nothing says)."""
    if declared is None:
        return "none declared"
    if confirmed is None:
        return f"declared {declared}"
    return f"declared {declared}, {'confirmed' if confirmed else 'not confirmed'}"


def verification_rows(verifications: list[ModelVerification]) -> list[VerificationRow]:
    """A hoster's verdict per model, by model."""
    return [
        VerificationRow(
            model=v.model,
            verdict=v.verdict,
            failed=v.verdict == VERDICT_FAILED,
            checks=v.checks,
            failures=v.failures,
            last_checked="never" if v.last_checked is None else timestamp(v.last_checked),
            quantization=quantization_text(v.declared, v.confirmed),
            quantization_confirmed=v.confirmed,
        )
        for v in sorted(verifications, key=lambda v: v.model)
    ]


def evidence_rows(verifications: list[ModelVerification], names: dict[str, str]) -> list[EvidenceRow]:
    """A hoster's recent spot checks over its models, newest first; the hoster each was compared with by
    name when a router knows it."""
    checks: list[tuple[str, CheckEvidence]] = [(v.model, e) for v in verifications for e in v.evidence]
    checks.sort(key=lambda c: c[1].at, reverse=True)
    return [
        EvidenceRow(
            model=model,
            at=timestamp(e.at),
            shape=e.shape.replace("_", " "),
            reference=hoster_label(e.reference, names),
            result="passed" if e.passed else "failed",
            passed=e.passed,
            positions=e.positions,
            shared=e.shared,
            mean_delta=DASH if e.mean_delta is None else f"{e.mean_delta:.4f}",
            top_overlap=DASH if e.top_overlap is None else f"{e.top_overlap:.0%}",
            problem=e.problem or DASH,
        )
        for model, e in checks
    ]


@dataclass
class HosterView:
    """A hoster's live state: status, models and prices, trust and its terms, spot check verdicts and their
    evidence."""

    name: str
    hoster_id: str
    status: str
    kind: str
    region: str
    load: str
    attempts: int
    usage_discrepancies: int
    implausible_speeds: int
    offers: list[OfferRow]
    trust_score: str
    trust_terms: list[TrustTerm]
    verifications: list[VerificationRow]
    evidence: list[EvidenceRow]


def trust_terms(trust: TrustTerms) -> list[TrustTerm]:
    """Each term of the trust score with the counts it comes from (``services/router/stats.py``)."""
    latency_detail = (
        f"advertised {milliseconds(trust.advertised_ttft_ms)} / observed p95 {milliseconds(trust.observed_p95_ttft_ms)}"
        if trust.advertised_ttft_ms is not None and trust.observed_p95_ttft_ms is not None
        else "1 until both the advertised and the observed p95 time to first token are known"
    )
    window = trust.window_attempts
    return [
        TrustTerm("reliability", share(trust.reliability),
                  f"({trust.window_successes} successes + 1) / ({window} attempts + 2)", "* reliability"),
        TrustTerm("midstream failures", share(trust.midstream),
                  f"{trust.window_midstream_failures} failures after the first byte / {window} attempts",
                  "* (1 - midstream)"),
        TrustTerm("latency", share(trust.latency), latency_detail, "* sqrt(latency)"),
        TrustTerm("history", share(trust.history),
                  f"{trust.lifetime_attempts} attempts in its life, {trust.age_s / 3600:,.1f} h old",
                  "* (0.5 + 0.5 * history)"),
        TrustTerm("dishonesty", share(trust.dishonesty),
                  f"{trust.window_discrepancies} usage reports past their bounds / ({window} attempts + 2)",
                  "* (1 - dishonesty)^2"),
    ]  # fmt: skip


def hoster_view(detail: HosterDetail, names: dict[str, str] | None = None) -> HosterView:
    """The hoster page's upper part from the router's view of the hoster (``names``: hoster ids to names, for
    the hosters its spot checks compared it with)."""
    speeds = {s.model: s for s in detail.speed}
    offers = []
    for offer in sorted(detail.models, key=lambda m: m.model):
        speed = speeds.get(offer.model)
        offers.append(
            OfferRow(
                model=offer.model,
                upstream_model=offer.upstream_model,
                input_price=price(offer.input_price),
                output_price=price(offer.output_price),
                context_length=f"{offer.context_length:,}" if offer.context_length else DASH,
                endpoints=", ".join(offer.endpoints),
                ttft_median=milliseconds(speed.ttft_median_ms if speed else None),
                ttft_p95=milliseconds(speed.ttft_p95_ms if speed else None),
                tokens_per_s=rate(speed.tokens_per_s if speed else None),
                samples=speed.samples if speed else 0,
                speed=DASH if speed is None else SPEED_NOT_BELIEVED if speed.suspicious else "believed",
                speed_believed=speed is None or not speed.suspicious,
                implausible_speeds=speed.implausible_speeds if speed else 0,
            )
        )
    status = "live" if detail.live else "offline"
    if detail.live and detail.cooling:
        status = "live, cooling down after failures"
    return HosterView(
        name=detail.name,
        hoster_id=detail.hoster_id,
        status=status,
        kind="cloud" if detail.cloud else "community",
        region=detail.region or DASH,
        load=f"{detail.in_flight or 0} of {detail.capacity}" if detail.capacity else DASH,
        attempts=detail.attempts,
        usage_discrepancies=detail.usage_discrepancies,
        implausible_speeds=detail.implausible_speeds,
        offers=offers,
        trust_score=share(detail.trust.score),
        trust_terms=trust_terms(detail.trust),
        verifications=verification_rows(detail.verifications),
        evidence=evidence_rows(detail.verifications, names or {}),
    )


@dataclass
class HosterAttemptRow:
    """One attempt in a hoster's recent attempts table."""

    finished: str
    request_id: str
    attempt: int
    model: str
    outcome: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    ttft: str
    duration: str
    error: str
    usage_discrepancy: str | None


def hoster_attempt_rows(items: list[HosterAttempt]) -> list[HosterAttemptRow]:
    """A hoster's recent attempts, with any usage discrepancy it was billed down for."""
    return [
        HosterAttemptRow(
            finished=timestamp(a.finished_at),
            request_id=a.request_id,
            attempt=a.attempt,
            model=a.model,
            outcome=a.outcome,
            stream=a.stream,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            estimated=a.usage_estimated,
            ttft=milliseconds(a.ttft_ms),
            duration=milliseconds(a.duration_ms),
            error=a.error or DASH,
            usage_discrepancy=a.usage_discrepancy,
        )
        for a in items
    ]
