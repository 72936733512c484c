"""The console in a real browser: Debian's headless Chromium driven by Playwright, against the whole stack
(the console behind the ingress, as ``make run`` serves it). An account signs in with its management key,
creates a key, calls the API with it through the official SDK, watches the requests appear with their cost
(table and chart), opens a routing record, revokes the key and gets a 401; a hoster signs in with its console
token and sees its earnings move; anyone sees the network; a model registered with its tokenizer is "verified"
where the others say "usage not verified", and a hoster measured past its model's speed bound is shown as
"not believed"; a hoster its spot checks failed is shown failed, with the checks' evidence, on the network
page and its own. Every control has an accessible name (Chromium's
own accessibility tree) and is reached with Tab. Screenshots go to ``$CS_TEST_ARTIFACTS/console`` (default
``tests/artifacts/console``)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from playwright.sync_api import Browser, Page, expect, sync_playwright

from libs.contracts import subjects
from libs.contracts.verification import CheckEvidence, SpotCheckJudged
from libs.devstack.processes import free_port
from libs.devstack.stack import (
    DEMO_MODEL,
    REPO_ROOT,
    AgentSpec,
    SimulatorSpec,
    Stack,
    demo_agent_config,
    throwaway_config,
)
from libs.devstack.tinymodel import tiny_model

pytestmark = pytest.mark.e2e

AGENT = "gpu-agent"
# A second hoster, of a model registered with its tokenizer (the network counts its usage) and a plausibility
# bound of 1 token per second: the simulator's answers are past it, as a hoster faking its speed would be.
FAST_AGENT = "fast-agent"
COUNTED_MODEL = "counted-demo"
CHROMIUM = os.environ.get("CS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CS_TEST_ARTIFACTS", REPO_ROOT / "tests" / "artifacts")) / "console"
# Roles of the controls a person operates; each must have a name in Chromium's accessibility tree.
CONTROL_ROLES = {"button", "link", "textbox", "spinbutton", "checkbox", "radio", "combobox", "searchbox"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Two hosters that joined as strangers do (so they have console tokens), the console behind the ingress;
    ``COUNTED_MODEL`` registered with a tiny model's tokenizer (the simulator answers whatever the model)."""
    # Paced as a real engine is: an instant upstream is faster than the router's default speed bound (5000
    # tokens per second), and its speed would not be believed.
    pace = {"CS_SIMULATOR_REPLY_TOKENS": "12", "CS_SIMULATOR_TTFT_MS": "20", "CS_SIMULATOR_TOKENS_PER_SECOND": "400"}
    simulator = SimulatorSpec("simulator", free_port(), pace)
    config = throwaway_config(
        simulators=[simulator],
        agents=[
            AgentSpec(AGENT, simulator.base_url, demo_agent_config(DEMO_MODEL), region="eu-west"),
            AgentSpec(FAST_AGENT, simulator.base_url, demo_agent_config(COUNTED_MODEL), region="us-east"),
        ],
        console_port=free_port(),
        service_env={"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"},
    )
    running = Stack(config).start()
    model = tiny_model(0)
    running.computeshare(
        "model", "register", COUNTED_MODEL, "--tokenizer", str(model.tokenizer_json),
        "--tokenizer-config", str(model.tokenizer_config), "--max-tokens-per-s", "1",
    )  # fmt: skip
    # The router believes billing's list of registered models (and their speed bounds) for a few seconds.
    deadline = time.monotonic() + 15
    while not any(m["id"] == COUNTED_MODEL and m["usage_verified"]
                  for m in httpx.get(f"{running.config.api_base}/models").json()["data"]):  # fmt: skip
        assert time.monotonic() < deadline, f"{COUNTED_MODEL} is not listed as registered"
        time.sleep(0.3)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (``apt-get install chromium``; ``make deps`` installs it), never a downloaded one."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make deps` (apt-get install chromium) or set CS_CHROMIUM")
    with sync_playwright() as playwright:
        # As root (CI, containers) Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page for each test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def reload_until(page: Page, ready: Callable[[], bool], timeout_s: float = 15) -> None:
    """Reload the page until ``ready()`` (billing settles a request just after its answer reached the client)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"the page did not show it within {timeout_s}s: {page.url}"
        time.sleep(0.3)
        page.reload()


def sign_in_account(page: Page, stack: Stack, management_key: str) -> None:
    page.goto(f"{stack.config.console_url}/signin")
    page.get_by_label("Management key").fill(management_key)
    page.get_by_role("button", name="Sign in to the account").click()


def sign_in_hoster(page: Page, stack: Stack, token: str) -> None:
    page.goto(f"{stack.config.console_url}/signin")
    page.get_by_label("Hoster console token").fill(token)
    page.get_by_role("button", name="Sign in as a hoster").click()


def nav(page: Page, link: str) -> None:
    """Follow a link of the console's navigation."""
    page.get_by_role("navigation", name="Console").get_by_role("link", name=link).click()


def credits_of(text: str) -> float:
    return float(text.replace(",", ""))


def chat(key: str, stack: Stack, stream: bool = False, model: str = DEMO_MODEL) -> str:
    """One request through the official SDK; its id (the routing record's)."""
    with openai.OpenAI(api_key=key, base_url=stack.config.api_base, max_retries=0) as client:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello from the browser test"}]
        if not stream:
            return client.chat.completions.create(model=model, messages=messages, max_tokens=16).id
        ids = {chunk.id for chunk in client.chat.completions.create(model=model, messages=messages,
                                                                     max_tokens=16, stream=True)}  # fmt: skip
        assert len(ids) == 1
        return ids.pop()


def refused_with(key: str, stack: Stack) -> int | None:
    """The HTTP status the SDK raised for a request with ``key`` (``None``: it was served)."""
    try:
        chat(key, stack)
    except openai.APIStatusError as refused:
        return refused.status_code
    return None


def chart_value(page: Page, canvas_id: str, dataset: int = 0) -> float:
    """The last (today's) value of a dataset of the Chart.js chart drawn on ``canvas_id``."""
    value = page.evaluate(
        "([id, i]) => { const c = Chart.getChart(id); return c ? c.data.datasets[i].data.at(-1) : null; }",
        [canvas_id, dataset],
    )
    assert value is not None, f"no chart drawn on #{canvas_id}"
    return float(value)


@pytest.mark.timeout(180)
def test_an_account_creates_a_key_uses_it_sees_its_requests_and_cost_and_revokes_it(stack: Stack, page: Page) -> None:
    account_id, _ = stack.create_account(credits="100", name="browser")
    sign_in_account(page, stack, stack.create_management_key(account_id))
    expect(page).to_have_url(re.compile(r"/console/account$"))
    expect(page.locator("#balance")).to_have_text("100")
    expect(page.locator("#spent-today")).to_have_text("0")
    shot(page, "01-account-signed-in")

    # Create a key with a limit: shown once.
    nav(page, "Keys")
    page.get_by_label("Label (optional)").fill("browser test")
    page.get_by_label("Requests per minute (blank: no limit)").fill("600")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("New API key").input_value()
    assert key.startswith("ngk_")
    row = page.locator("#keys tbody tr", has_text="browser test")
    expect(row).to_contain_text("600 requests/min")
    expect(row.locator(".last-used")).to_have_text("never")
    shot(page, "02-key-created")
    page.reload()  # nothing keeps the key: it is gone from the page
    expect(page.get_by_label("New API key")).to_have_count(0)

    # Use it from the SDK; the requests appear with their hoster, tokens, cost and outcome.
    request_ids = [chat(key, stack), chat(key, stack, stream=True)]
    nav(page, "Account")

    def settled() -> bool:
        rows = [page.locator(f'#requests tr[data-request-id="{rid}"]') for rid in request_ids]
        return all(r.count() == 1 and r.locator(".outcome").inner_text() == "succeeded" for r in rows)

    reload_until(page, settled)
    for request_id in request_ids:
        request_row = page.locator(f'#requests tr[data-request-id="{request_id}"]')
        expect(request_row).to_contain_text(AGENT)
        expect(request_row).to_contain_text(DEMO_MODEL)
        assert credits_of(request_row.locator(".cost").inner_text()) > 0
    spent = credits_of(page.locator("#spent-today").inner_text())
    assert spent > 0
    assert credits_of(page.locator("#balance").inner_text()) == pytest.approx(100 - spent)
    # The chart's bar for today is the spend.
    assert chart_value(page, "spend-chart") == pytest.approx(spent)
    assert chart_value(page, "spend-chart", dataset=1) > 0  # tokens
    shot(page, "03-account-with-requests")

    # A request opens its routing record.
    page.get_by_role("link", name=f"Routing record of {request_ids[0]}").click()
    expect(page.get_by_role("heading", name="Routing record")).to_be_visible()
    expect(page.locator("#attempts tbody tr")).to_have_count(1)
    expect(page.locator("#attempts tbody tr")).to_contain_text(AGENT)
    expect(page.locator("#attempts tbody tr")).to_contain_text("succeeded")
    assert credits_of(page.locator("#record-cost").inner_text()) > 0
    shot(page, "04-routing-record")

    # The key shows its last use; revoking it turns the SDK away with a 401.
    nav(page, "Keys")
    expect(row.locator(".last-used")).not_to_have_text("never")
    row.get_by_role("button", name=re.compile("^Revoke key")).click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    expect(row.locator(".status")).to_contain_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    shot(page, "05-key-revoked")
    deadline = time.monotonic() + 10  # the ingress trusts a verified key for CS_INGRESS_KEY_CACHE_S at most
    while (status := refused_with(key, stack)) is None:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.3)
    assert status == 401

    # Signing out ends the session.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/signin"))
    page.goto(f"{stack.config.console_url}/account")
    expect(page).to_have_url(re.compile(r"/console/signin$"))


@pytest.mark.timeout(120)
def test_a_hoster_signs_in_with_its_console_token_and_sees_its_earnings_move(stack: Stack, page: Page) -> None:
    agent = stack.config.agents[0]
    assert agent.console_token.startswith("ngh_")
    sign_in_hoster(page, stack, agent.console_token)
    expect(page).to_have_url(re.compile(r"/console/hoster$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hoster {AGENT}")
    expect(page.locator("#live-status")).to_contain_text("live")
    expect(page.locator("#offers")).to_contain_text(DEMO_MODEL)
    expect(page.locator("#offers")).to_contain_text("0.4")  # its input price, credits per million tokens
    expect(page.locator("#trust tbody tr")).to_have_count(5)
    before = credits_of(page.locator("#earned-total").inner_text())
    chart_before = chart_value(page, "earnings-chart")
    shot(page, "06-hoster-before")

    _, key = stack.create_account(credits="10", name="hoster-customer")
    request_id = chat(key, stack)
    reload_until(page, lambda: credits_of(page.locator("#earned-total").inner_text()) > before)
    assert chart_value(page, "earnings-chart") > chart_before
    assert chart_value(page, "requests-chart") >= 1  # today's succeeded attempts
    attempt = page.locator("#attempts tbody tr", has_text=request_id)
    expect(attempt).to_contain_text("succeeded")
    expect(attempt).to_contain_text("none")  # no usage discrepancy
    shot(page, "07-hoster-earned")


def test_anyone_sees_the_network_with_prices_hosters_and_speed(stack: Stack, page: Page) -> None:
    _, key = stack.create_account(credits="10", name="network-visitor")
    for _ in range(6):  # enough samples for a median time to first token
        chat(key, stack, stream=True)
    page.goto(f"{stack.config.console_url}/network")
    model = page.locator("#models tbody tr", has_text=DEMO_MODEL)
    expect(model).to_contain_text("0.4")  # input price
    expect(model).to_contain_text("1.2")  # output price
    expect(model.locator("td").first).to_have_text("1")  # hosters
    hoster = page.locator("#hosters tbody tr", has_text=AGENT)
    expect(hoster).to_contain_text("live")
    expect(hoster).to_contain_text("eu-west")
    reload_until(page, lambda: "ms" in page.locator("#hosters tbody tr", has_text=AGENT).inner_text())
    expect(model).to_contain_text(" ms")  # the model's median time to first token
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    shot(page, "08-network")


@pytest.mark.timeout(120)
def test_a_responses_api_request_is_shown_like_any_other_under_its_own_api(stack: Stack, page: Page) -> None:
    account_id, key = stack.create_account(credits="10", name="responses")
    with openai.OpenAI(api_key=key, base_url=stack.config.api_base, max_retries=0) as client:
        response_id = client.responses.create(model=DEMO_MODEL, input="Say hello from the browser test").id
    chat_id = chat(key, stack)
    sign_in_account(page, stack, stack.create_management_key(account_id))

    def settled() -> bool:
        rows = [page.locator(f'#requests tr[data-request-id="{rid}"]') for rid in (response_id, chat_id)]
        return all(r.count() == 1 and r.locator(".outcome").inner_text() == "succeeded" for r in rows)

    reload_until(page, settled)
    row = page.locator(f'#requests tr[data-request-id="{response_id}"]')
    expect(row.locator(".api")).to_have_text("responses")
    expect(page.locator(f'#requests tr[data-request-id="{chat_id}"] .api')).to_have_text("chat.completions")
    expect(row).to_contain_text(AGENT)
    assert credits_of(row.locator(".cost").inner_text()) > 0
    row.get_by_role("link", name=f"Routing record of {response_id}").click()
    expect(page.locator("#record-api")).to_have_text("responses")
    expect(page.locator("#attempts tbody tr")).to_contain_text("succeeded")
    assert credits_of(page.locator("#record-cost").inner_text()) > 0
    shot(page, "13-responses-request")


@pytest.mark.timeout(120)
def test_usage_not_verified_and_speeds_not_believed_are_said_where_they_are_shown(stack: Stack, page: Page) -> None:
    account_id, key = stack.create_account(credits="10", name="verified-or-not")
    counted, claimed = chat(key, stack, model=COUNTED_MODEL), chat(key, stack, stream=True)

    # Each routing record says whether the network counted its usage.
    sign_in_account(page, stack, stack.create_management_key(account_id))
    for request_id, usage in [(counted, "verified"), (claimed, "usage not verified")]:
        page.goto(f"{stack.config.console_url}/requests/{request_id}")
        reload_until(page, lambda: page.locator("#record-usage").inner_text() != "—")  # until it settled
        expect(page.locator("#record-usage")).to_have_text(usage)
        expect(page.locator("#attempts tbody tr")).to_contain_text("succeeded")
    expect(page.get_by_role("heading", name="Routing record")).to_be_visible()
    shot(page, "10-routing-record-usage-not-verified")

    # The network page: each model's usage, and the hoster faster than its model's bound shows no speed.
    page.goto(f"{stack.config.console_url}/network")
    expect(page.locator("#models tbody tr", has_text=COUNTED_MODEL).locator(".usage")).to_have_text("verified")
    expect(page.locator("#models tbody tr", has_text=DEMO_MODEL).locator(".usage")).to_have_text("usage not verified")
    fast = page.locator("#hosters tbody tr", has_text=FAST_AGENT)
    expect(fast.locator(".tokens-per-s")).to_have_text("not believed")
    expect(fast.locator(".ttft")).to_have_text("not believed")
    expect(page.locator("#hosters tbody tr", has_text=AGENT).locator(".tokens-per-s")).not_to_have_text("not believed")
    shot(page, "11-network-usage-and-speed")

    # The hoster sees its implausible speeds, and which model's speed is not believed.
    sign_in_hoster(page, stack, stack.config.agents[1].console_token)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hoster {FAST_AGENT}")
    assert int(page.locator("#implausible-speeds").inner_text()) >= 1
    offer = page.locator("#offers tbody tr", has_text=COUNTED_MODEL)
    expect(offer.locator(".speed")).to_have_text("not believed")
    shot(page, "12-hoster-implausible-speeds")


def test_sign_in_refuses_inference_keys_and_unknown_tokens_and_a_revoked_key_ends_its_session(
    stack: Stack, page: Page
) -> None:
    account_id, inference_key = stack.create_account(credits="1", name="refusals")
    sign_in_account(page, stack, inference_key)
    expect(page.get_by_role("alert")).to_contain_text("inference key")
    expect(page.get_by_label("Management key")).to_have_attribute("aria-invalid", "true")
    sign_in_hoster(page, stack, "ngh_not-a-real-token-at-all-0000000000")
    expect(page.get_by_role("alert")).to_contain_text("not the console token of any hoster")
    shot(page, "09-sign-in-refused")

    management_key = stack.create_management_key(account_id)
    sign_in_account(page, stack, management_key)
    expect(page).to_have_url(re.compile(r"/console/account$"))
    key_id = stack.computeshare("key", "find", management_key)["key_id"]
    stack.computeshare("key", "revoke", key_id)
    page.reload()
    expect(page).to_have_url(re.compile(r"/console/signin\?ended=revoked$"))
    expect(page.get_by_role("status")).to_contain_text("no longer valid")


def test_a_key_with_a_bad_limit_is_refused_with_a_message_and_the_form_kept(stack: Stack, page: Page) -> None:
    account_id, _ = stack.create_account(credits="1", name="bad-limits")
    sign_in_account(page, stack, stack.create_management_key(account_id))
    nav(page, "Keys")
    page.get_by_label("Label (optional)").fill("kept")
    # The browser's own check (min=1) would stop the form: send it as a script could.
    page.get_by_label("Tokens per minute (blank: no limit)").evaluate("el => el.removeAttribute('min')")
    page.get_by_label("Tokens per minute (blank: no limit)").fill("0")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("alert")).to_contain_text("whole numbers from 1")
    expect(page.get_by_label("Label (optional)")).to_have_value("kept")
    expect(page.get_by_label("New API key")).to_have_count(0)
    assert [k["kind"] for k in stack.computeshare("key", "list", account_id)] == ["management", "inference"]


def test_every_form_needs_the_sessions_csrf_token(stack: Stack, page: Page) -> None:
    console = stack.config.console_url
    assert console is not None
    account_id, _ = stack.create_account(credits="1", name="csrf")
    management_key = stack.create_management_key(account_id)
    # Without a token, or with another session's, the sign-in form is refused.
    with httpx.Client() as other:
        other.get(f"{console}/signin")
        foreign = re.search(r'name="csrf_token" value="([^"]+)"', other.get(f"{console}/signin").text)
        assert foreign is not None
    with httpx.Client() as visitor:
        visitor.get(f"{console}/signin")
        form = {"kind": "account", "secret": management_key}
        assert visitor.post(f"{console}/signin", data=form).status_code == 403
        assert visitor.post(f"{console}/signin", data={**form, "csrf_token": foreign.group(1)}).status_code == 403
    # Signed in, a forged form (no token) neither creates nor revokes a key, nor signs out.
    sign_in_account(page, stack, management_key)
    keys_before = stack.computeshare("key", "list", account_id)
    created = page.request.post(f"{console}/keys", form={"label": "forged"}, max_redirects=0)
    assert created.status == 403
    target = next(k for k in keys_before if k["kind"] == "inference")
    revoked = page.request.post(f"{console}/keys/{target['key_id']}/revoke", form={}, max_redirects=0)
    assert revoked.status == 403
    assert page.request.post(f"{console}/signout", form={}, max_redirects=0).status == 403
    assert stack.computeshare("key", "list", account_id) == keys_before
    page.goto(f"{console}/account")
    expect(page).to_have_url(re.compile(r"/console/account$"))


def test_the_console_writes_no_address_or_text_a_request_chose(stack: Stack, page: Page) -> None:
    """Through the ingress: a trailing slash is a 404, not a redirect to the console's own address (the Host
    the proxy sent it); the keys page names no text from its address, only a key the account revoked."""
    console = stack.config.console_url
    assert console is not None
    answer = httpx.get(f"{console}/account/", follow_redirects=False)
    assert answer.status_code == 404
    assert "location" not in answer.headers
    account_id, _ = stack.create_account(credits="1", name="notices")
    sign_in_account(page, stack, stack.create_management_key(account_id))
    page.goto(f"{console}/keys?revoked=ngk_abcd%E2%80%A6%20and%20your%20account%20is%20suspended")
    expect(page.get_by_role("heading", name="Keys", exact=True)).to_be_visible()
    expect(page.get_by_role("status")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("suspended")


def unnamed_controls(page: Page) -> list[str]:
    """Controls (buttons, links, text fields...) without an accessible name, per Chromium's accessibility tree."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    return [
        f"{node['role']['value']} {node.get('backendDOMNodeId')}"
        for node in nodes
        if not node.get("ignored")
        and node.get("role", {}).get("value") in CONTROL_ROLES
        and not (node.get("name", {}).get("value") or "").strip()
    ]


def unreachable_by_tab(page: Page) -> list[str]:
    """Focusable controls that pressing Tab from the top of the page never reaches."""
    count = page.evaluate(
        """() => {
        const selector = 'a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select, '
                       + 'textarea, summary, [tabindex]:not([tabindex="-1"])';
        const controls = [...document.querySelectorAll(selector)].filter((el) => el.getClientRects().length);
        controls.forEach((el, i) => el.setAttribute('data-tab-check', String(i)));
        document.activeElement && document.activeElement.blur();
        return controls.length;
    }"""
    )
    reached: set[str] = set()
    for _ in range(count + 3):
        page.keyboard.press("Tab")
        index = page.evaluate("() => document.activeElement && document.activeElement.getAttribute('data-tab-check')")
        if index is not None:
            reached.add(index)
    missing = sorted(set(map(str, range(count))) - reached, key=int)
    return [page.locator(f'[data-tab-check="{i}"]').evaluate("el => el.outerHTML.slice(0, 120)") for i in missing]


@pytest.mark.timeout(120)
def test_every_control_is_labelled_and_reached_by_keyboard(stack: Stack, browser: Browser) -> None:
    account_id, key = stack.create_account(credits="10", name="a11y")
    request_id = chat(key, stack)
    pages: list[tuple[str, Page]] = []
    account = browser.new_context()
    hoster = browser.new_context()
    try:
        visitor_page = account.new_page()
        visitor_page.goto(f"{stack.config.console_url}/signin")
        pages.append(("sign-in", visitor_page))
        signed_in = account.new_page()
        sign_in_account(signed_in, stack, stack.create_management_key(account_id))
        for name, path in [("network", "/network"), ("account", "/account"), ("keys", "/keys"),
                           ("request", f"/requests/{request_id}")]:  # fmt: skip
            view = account.new_page()
            view.goto(f"{stack.config.console_url}{path}")
            pages.append((name, view))
        hoster_page = hoster.new_page()
        sign_in_hoster(hoster_page, stack, stack.config.agents[0].console_token)
        pages.append(("hoster", hoster_page))
        for name, view in pages:
            assert unnamed_controls(view) == [], f"{name}: controls without an accessible name"
            assert unreachable_by_tab(view) == [], f"{name}: controls Tab never reaches"
    finally:
        account.close()
        hoster.close()


def test_wrong_sign_ins_from_one_address_are_throttled(stack: Stack) -> None:
    """Each address may get a sign-in wrong ``sign_in_burst`` times (10), then ``sign_ins_per_minute``; a 429
    with Retry-After before billing is asked. Sent straight to the console (which believes X-Forwarded-For
    from loopback, as from the ingress) so this test's address is its own."""
    direct = f"http://127.0.0.1:{stack.config.console_port}/console"

    def attempts(address: str, count: int) -> list[httpx.Response]:
        answers = []
        with httpx.Client(headers={"x-forwarded-for": address}) as visitor:
            page = visitor.get(f"{direct}/signin").text
            for _ in range(count):
                token = re.search(r'name="csrf_token" value="([^"]+)"', page)
                assert token is not None
                form = {"kind": "account", "secret": "ngm_" + "x" * 43, "csrf_token": token.group(1)}
                answer = visitor.post(f"{direct}/signin", data=form)
                answers.append(answer)
                page = answer.text
        return answers

    answers = attempts("203.0.113.7", 12)
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert "Too many sign-ins" in answers[-1].text
    assert [a.status_code for a in attempts("203.0.113.8", 1)] == [401]  # another address is not held back


@pytest.mark.timeout(120)
def test_a_hoster_its_spot_checks_failed_is_shown_failed_with_the_evidence(stack: Stack, page: Page) -> None:
    """Three failed checks of ``FAST_AGENT`` on ``COUNTED_MODEL``, broadcast as a router's spot checker does
    (this stack runs none, so nothing else judges it): every router folds them into a failed verdict. Last in
    the module: each check it fails while failed cools the hoster down (out of rotation for a while)."""
    console = stack.config.console_url
    fast, other = stack.config.agents[1], stack.config.agents[0]
    assert (fast.name, other.name) == (FAST_AGENT, AGENT)

    # Before: a request's routing record says its hoster's verdict when it was served.
    account_id, key = stack.create_account(credits="10", name="spot-checked")
    request_id = chat(key, stack, model=COUNTED_MODEL)
    sign_in_account(page, stack, stack.create_management_key(account_id))
    page.goto(f"{console}/requests/{request_id}")
    reload_until(page, lambda: page.locator("#attempts tbody tr", has_text="succeeded").count() == 1)
    expect(page.locator("#attempts tbody tr .verification")).to_have_text("unchecked")

    now = time.time()
    checks = [
        CheckEvidence(at=now - 40, shape="greedy", reference=other.hoster_id, passed=False, positions=4, shared=3,
                      problem="greedy token 4 is one the reference did not rank near its best"),
        CheckEvidence(at=now - 20, shape="sampled_logprobs", reference=other.hoster_id, passed=False, positions=16,
                      shared=16, mean_delta=0.8421, top_overlap=0.2,
                      problem="logprobs differ from the reference's by 0.8421 on average"),
        CheckEvidence(at=now, shape="greedy_logprobs", reference=other.hoster_id, passed=False, positions=9,
                      shared=8, mean_delta=0.5, top_overlap=0.4,
                      problem="only 40% of the reference's top tokens are among the hoster's"),
    ]  # fmt: skip

    async def judge() -> None:
        nc = await nats.connect(stack.nats_url, user_credentials=str(stack.creds("test-console-checks", "test")))
        try:
            for evidence in checks:
                judged = SpotCheckJudged(hoster_id=fast.hoster_id, model=COUNTED_MODEL, evidence=evidence)
                await nc.publish(subjects.SPOT_CHECK_JUDGED, judged.model_dump_json().encode())
            await nc.flush()
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as other_thread:  # Playwright's sync API runs an event loop in this one
        other_thread.submit(asyncio.run, judge()).result()

    # The network page: the hoster's verdict, marked; its model has no verified hoster and no reference.
    page.goto(f"{console}/network")
    fast_row = page.locator("#hosters tbody tr", has_text=FAST_AGENT)
    reload_until(page, lambda: fast_row.locator(".verification").inner_text() == "failed")
    expect(fast_row.locator(".verification .warning")).to_have_text("failed")
    expect(page.locator("#hosters tbody tr", has_text=AGENT).locator(".verification")).to_have_text("unchecked")
    model_row = page.locator("#models tbody tr", has_text=COUNTED_MODEL)
    expect(model_row.locator(".verified-hosters")).to_have_text("0 of 1")
    expect(model_row.locator(".reference")).to_have_text("no")
    shot(page, "14-network-spot-check-failed")

    # The hoster's own page: the verdict with its counts, and each check's evidence, newest first.
    sign_in_hoster(page, stack, fast.console_token)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hoster {FAST_AGENT}")
    verdict = page.locator("#verifications tbody tr", has_text=COUNTED_MODEL)
    expect(verdict.locator(".verdict .warning")).to_have_text("failed")
    expect(verdict.locator(".checks")).to_have_text("3")
    expect(verdict.locator(".failures")).to_have_text("3")
    evidence = page.locator("#evidence tbody tr")
    expect(evidence).to_have_count(3)
    expect(evidence.locator(".reference")).to_have_text([AGENT] * 3)  # compared with: by name
    expect(evidence.locator(".result .warning")).to_have_text(["failed"] * 3)
    expect(evidence.locator(".problem")).to_have_text([c.problem or "" for c in reversed(checks)])
    expect(evidence.nth(1)).to_contain_text("0.8421")
    expect(evidence.nth(1)).to_contain_text("20%")
    expect(evidence.nth(2)).to_contain_text("greedy")
    expect(page.locator("#live-status")).to_contain_text("cooling")
    shot(page, "15-hoster-spot-checks-failed")
