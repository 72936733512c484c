"""The console's pages rendered in memory (through an ASGI transport), with billing's and the routers' answers
stood in for: what the network, routing record and hoster pages say of counted usage and believed speeds."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from libs.contracts import subjects
from libs.contracts.billing import AttemptRecord, GenerationRecord
from libs.contracts.hosters import LiveHoster, LiveHosters, LiveModel, ModelOffer, ModelsListing
from libs.contracts.management import (
    AccountGenerationReply,
    HosterAttempts,
    HosterDailyReport,
    HosterDetail,
    HosterDetailReply,
    HosterTokenInfo,
    ManagementKeyInfo,
    ModelSpeed,
    TrustTerms,
)
from libs.contracts.verification import CheckEvidence, ModelVerification
from services.console.app import build_app
from services.console.queries import Queries, Reply
from services.console.sessions import COOKIE, Session
from services.console.settings import ConsoleSettings

HOSTER_ID = "11111111-1111-4111-8111-111111111111"


class Answers(Queries):
    """Billing and the router as canned replies, by subject."""

    def __init__(self, replies: dict[str, BaseModel]) -> None:
        super().__init__(timeout_s=1.0)
        self.replies = replies

    async def _ask(self, subject: str, query: BaseModel | None, reply: type[Reply], who: str) -> Reply:
        return reply.model_validate(self.replies[subject].model_dump())


def console_with(replies: dict[str, BaseModel]) -> FastAPI:
    app = build_app(ConsoleSettings(session_secret="s" * 48, metrics_port=0))
    app.state.console = dataclasses.replace(app.state.console, queries=Answers(replies))
    return app


async def page(app: FastAPI, path: str, session: Session | None = None) -> str:
    cookies = {COOKIE: app.state.console.codec.dumps(session)} if session is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console", cookies=cookies) as browser:
        answer = await browser.get(path)
    assert answer.status_code == 200, answer.text
    return answer.text


class Tables(HTMLParser):
    """Every table of a page by id: its header cells, and each row's cells as text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self.figures: dict[str, str] = {}
        self._table: str | None = None
        self._part = "rows"
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._dd: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs).get("id")
        if tag == "table" and named:
            self._table = named
            self.tables[named] = {"head": [], "rows": []}
        elif tag == "thead":
            self._part = "head"
        elif tag == "tbody":
            self._part = "rows"
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "dd" and named:
            self._dd = (named, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._table is not None and self._row is not None:
            self.tables[self._table][self._part].append(self._row)
            self._row = None
        elif tag == "dd" and self._dd is not None:
            self.figures[self._dd[0]] = " ".join("".join(self._dd[1]).split())
            self._dd = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._dd is not None:
            self._dd[1].append(data)


def read(html: str) -> Tables:
    tables = Tables()
    tables.feed(html)
    return tables


def column(tables: Tables, table: str, row: str, heading: str) -> str:
    """The cell under ``heading`` in the row whose first cell is ``row``."""
    [head] = tables.tables[table]["head"]
    [cells] = [r for r in tables.tables[table]["rows"] if r[0] == row]
    return cells[head.index(heading)]


def live_model(model_id: str, verified: bool) -> LiveModel:
    return LiveModel(id=model_id, hosters=1, min_input_price=1, max_input_price=1, min_output_price=2,
                     max_output_price=2, context_length=None, first_seen=0, usage_verified=verified)  # fmt: skip


def live_hoster(name: str, models: list[str], suspicious: list[str]) -> LiveHoster:
    return LiveHoster(hoster_id=f"id-{name}", name=name, live=True, cloud=False, models=models, trust=0.5,
                      cooling=False, attempts=9, ttft_median_ms=120.0, tokens_per_s=45.0,
                      speed_suspicious_models=suspicious)  # fmt: skip


async def test_the_network_page_says_whose_usage_is_verified_and_whose_speed_is_not_believed() -> None:
    app = console_with({
        subjects.LIST_MODELS: ModelsListing(models=[live_model("counted", True), live_model("claimed", False)]),
        subjects.LIST_HOSTERS: LiveHosters(hosters=[live_hoster("honest", ["counted"], []),
                                                    live_hoster("instant", ["claimed"], ["claimed"])]),
    })  # fmt: skip
    tables = read(await page(app, "/console/network"))
    assert column(tables, "models", "counted", "Usage") == "verified"
    assert column(tables, "models", "claimed", "Usage") == "usage not verified"
    assert column(tables, "models", "claimed", "Tokens/s") == "not believed"
    assert column(tables, "hosters", "honest", "Tokens/s") == "45.0"
    assert column(tables, "hosters", "honest", "Median time to first token") == "120 ms"
    assert column(tables, "hosters", "instant", "Tokens/s") == "not believed"
    assert column(tables, "hosters", "instant", "Median time to first token") == "not believed"


def record(verified: bool | None) -> GenerationRecord:
    attempt = AttemptRecord(attempt=1, hoster_id=HOSTER_ID, model="m", outcome="succeeded", prompt_tokens=10,
                            completion_tokens=5, ttft_ms=100, duration_ms=400)  # fmt: skip
    return GenerationRecord(id="r1", model="m", status="settled", created=0, prompt_tokens=10, completion_tokens=5,
                            cost=0.000075, usage_verified=verified, attempts=[attempt])  # fmt: skip


async def test_the_routing_record_page_says_whether_the_usage_was_verified() -> None:
    signed_in = Session.new().signed_in("account", "ab" * 32)
    shown = {}
    for verified in (True, False, None):
        app = console_with({
            subjects.VERIFY_MANAGEMENT_KEY: ManagementKeyInfo(status="valid", key_id="k", account_id="acc"),
            subjects.SHOW_ACCOUNT_GENERATION: AccountGenerationReply(generation=record(verified)),
            subjects.LIST_HOSTERS: LiveHosters(hosters=[]),
        })  # fmt: skip
        shown[verified] = read(await page(app, "/console/requests/r1", signed_in)).figures["record-usage"]
    assert shown == {True: "verified", False: "usage not verified", None: "—"}


async def test_the_hoster_page_shows_implausible_speeds_and_each_models_speed_believed_or_not() -> None:
    trust = TrustTerms(score=0.5, reliability=1, midstream=0, latency=1, history=0.5, dishonesty=0,
                       window_attempts=30, window_successes=30, window_midstream_failures=0, window_discrepancies=0,
                       lifetime_attempts=30, age_s=60)  # fmt: skip
    detail = HosterDetail(
        hoster_id=HOSTER_ID, name="gpu", live=True, cloud=False, cooling=False, trust=trust, attempts=30,
        implausible_speeds=4, usage_discrepancies=1,
        models=[ModelOffer(model=m, upstream_model=m, input_price=1, output_price=2) for m in ("fast", "fair")],
        speed=[ModelSpeed(model="fast", tokens_per_s=4000, samples=6, implausible_speeds=4, suspicious=True),
               ModelSpeed(model="fair", tokens_per_s=40, samples=9)],
    )  # fmt: skip
    app = console_with({
        subjects.VERIFY_HOSTER_TOKEN: HosterTokenInfo(status="valid", hoster_id=HOSTER_ID, name="gpu"),
        subjects.SHOW_HOSTER: HosterDetailReply(hoster=detail),
        subjects.HOSTER_DAILY: HosterDailyReport(days=[], earned_total=0),
        subjects.LIST_HOSTER_ATTEMPTS: HosterAttempts(items=[]),
        subjects.LIST_HOSTERS: LiveHosters(hosters=[]),
    })  # fmt: skip
    tables = read(await page(app, "/console/hoster", Session.new().signed_in("hoster", "cd" * 32)))
    assert (tables.figures["implausible-speeds"], tables.figures["usage-discrepancies"]) == ("4", "1")
    assert column(tables, "offers", "fast", "Speed") == "not believed"
    assert column(tables, "offers", "fast", "Implausible speeds") == "4"
    assert column(tables, "offers", "fair", "Speed") == "believed"
    assert column(tables, "offers", "fair", "Implausible speeds") == "0"


async def test_the_pages_show_spot_check_verdicts_and_a_hosters_evidence() -> None:
    many = live_hoster("many", ["counted", "claimed"], [])
    many.verifications = {"counted": "verified", "claimed": "failed"}
    counted = live_model("counted", True)
    counted.verified_hosters, counted.has_reference = 1, True
    app = console_with({
        subjects.LIST_MODELS: ModelsListing(models=[counted, live_model("claimed", False)]),
        subjects.LIST_HOSTERS: LiveHosters(hosters=[many, live_hoster("reference", ["counted"], [])]),
    })  # fmt: skip
    tables = read(await page(app, "/console/network"))
    assert column(tables, "models", "counted", "Verified hosters") == "1 of 1"
    assert column(tables, "models", "counted", "Reference") == "yes"
    assert column(tables, "models", "claimed", "Reference") == "no"
    assert column(tables, "hosters", "many", "Spot checks") == "claimed: failed counted: verified"
    assert column(tables, "hosters", "reference", "Spot checks") == "unchecked"

    trust = TrustTerms(score=0.2, reliability=1, midstream=0, latency=1, history=0.5, dishonesty=0.5,
                       window_attempts=3, window_successes=3, window_midstream_failures=0, window_discrepancies=0,
                       lifetime_attempts=3, age_s=60)  # fmt: skip
    check = CheckEvidence(at=0, shape="sampled_logprobs", reference="id-reference", passed=False, positions=16,
                          shared=2, mean_delta=1.5, top_overlap=0.3, problem="logprobs differ")  # fmt: skip
    detail = HosterDetail(
        hoster_id=HOSTER_ID, name="gpu", live=True, cloud=False, cooling=False, trust=trust, attempts=3,
        models=[ModelOffer(model="counted", upstream_model="up", input_price=1, output_price=2)], speed=[],
        verifications=[ModelVerification(model="counted", verdict="failed", checks=3, failures=3, last_checked=0,
                                         declared="f16", confirmed=False, evidence=[check])],
    )  # fmt: skip
    app = console_with({
        subjects.VERIFY_HOSTER_TOKEN: HosterTokenInfo(status="valid", hoster_id=HOSTER_ID, name="gpu"),
        subjects.SHOW_HOSTER: HosterDetailReply(hoster=detail),
        subjects.HOSTER_DAILY: HosterDailyReport(days=[], earned_total=0),
        subjects.LIST_HOSTER_ATTEMPTS: HosterAttempts(items=[]),
        subjects.LIST_HOSTERS: LiveHosters(hosters=[live_hoster("reference", ["counted"], [])]),
    })  # fmt: skip
    tables = read(await page(app, "/console/hoster", Session.new().signed_in("hoster", "cd" * 32)))
    assert column(tables, "verifications", "counted", "Verdict") == "failed"
    assert column(tables, "verifications", "counted", "Checks") == "3"
    assert column(tables, "verifications", "counted", "Quantization") == "declared f16, not confirmed"
    [head] = tables.tables["evidence"]["head"]
    [row] = tables.tables["evidence"]["rows"]
    shown = dict(zip(head, row, strict=True))
    assert shown["Compared with"] == "reference"
    assert (shown["Result"], shown["Positions compared"], shown["Shared prefix"]) == ("failed", "16", "2")
    assert (shown["Mean logprob difference"], shown["Top-token overlap"], shown["Problem"]) == (
        "1.5000", "30%", "logprobs differ"
    )  # fmt: skip


async def test_the_routing_record_page_shows_each_attempts_verdict() -> None:
    failed = record(True)
    failed.attempts[0].verification = "failed"
    app = console_with({
        subjects.VERIFY_MANAGEMENT_KEY: ManagementKeyInfo(status="valid", key_id="k", account_id="acc"),
        subjects.SHOW_ACCOUNT_GENERATION: AccountGenerationReply(generation=failed),
        subjects.LIST_HOSTERS: LiveHosters(hosters=[]),
    })  # fmt: skip
    tables = read(await page(app, "/console/requests/r1", Session.new().signed_in("account", "ab" * 32)))
    assert column(tables, "attempts", "1", "Spot check verdict") == "failed"
