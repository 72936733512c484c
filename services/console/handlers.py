"""The console's pages: thin routes between the browser and ``Queries``; what they show is built in ``service``."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from libs.contracts.management import CreateKey, HosterTokenInfo, ManagementKeyInfo
from libs.platform import apikeys
from libs.platform.ratelimit import FailureBudget
from services.console import service
from services.console.queries import Queries, Unavailable
from services.console.sessions import (
    COOKIE,
    CSRF_FIELD,
    Session,
    SessionCodec,
    SessionKind,
    clear_session_cookie,
    served_over_tls,
    set_session_cookie,
)
from services.console.settings import ConsoleSettings

router = APIRouter(prefix="/console")

# The one chart library, pinned in package.json and served by the console itself (no CDN: it works offline).
CHART_JS = Path("chart.js") / "dist" / "chart.umd.min.js"


@dataclass(frozen=True)
class Console:
    """What every page needs, owned by the app (``app.state.console``)."""

    settings: ConsoleSettings
    queries: Queries
    codec: SessionCodec
    templates: Jinja2Templates
    sign_ins: FailureBudget


async def console_of(request: Request) -> Console:
    """The app's console parts."""
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


def session_of(request: Request, console: Console) -> Session:
    """The browser's session, or a new visitor's one (a missing, forged or expired cookie)."""
    return console.codec.loads(request.cookies.get(COOKIE)) or Session.new()


def over_tls(request: Request) -> bool:
    """Whether the browser reached us over TLS (a proxy in front says so in ``X-Forwarded-Proto``)."""
    return served_over_tls(request.url.scheme, request.headers.get("x-forwarded-proto"))


def render(
    request: Request, console: Console, session: Session, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page, with the session (re-)set on it: a visit extends a session's life."""
    response = console.templates.TemplateResponse(
        request,
        template,
        {"session": session, "csrf_field": CSRF_FIELD, "path": request.url.path, **context},
        status_code=status_code,
    )
    # Pages show balances, keys and requests: no cache keeps them.
    response.headers["cache-control"] = "no-store"
    set_session_cookie(response, session, console.codec, over_tls(request))
    return response


def redirect(to: str, request: Request, console: Console, session: Session | None = None) -> RedirectResponse:
    """A 303 to ``to`` (after a form, the browser GETs it), setting ``session`` if given."""
    response = RedirectResponse(to, status_code=303)
    if session is not None:
        set_session_cookie(response, session, console.codec, over_tls(request))
    return response


def signed_out(request: Request, console: Console, why: str) -> RedirectResponse:
    """Back to the sign-in page as a visitor, saying why (the key or token stopped being valid)."""
    return redirect(f"/console/signin?ended={why}", request, console, Session.new())


# The console's forms are a few short fields (the longest a key or token, or a label of 100 characters): the
# body is held to ``app.MAX_FORM_BYTES`` (``middleware.BodyLimitMiddleware``), and parsed only as a URL-encoded form of
# at most MAX_FORM_FIELDS fields of MAX_FIELD_BYTES each, with no file, before its CSRF token is checked.
FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 4 * 1024


async def form_of(request: Request, console: Console, session: Session) -> dict[str, str] | HTMLResponse:
    """The form's text fields, or the page that refuses it: 415 when it is not a URL-encoded form, 400 past
    the limits on fields, 403 when its CSRF token is not the session's (a forged request)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM:
        message = "The console accepts forms sent as application/x-www-form-urlencoded only."
        return render(request, console, session, "error.html", status_code=415, title="Form refused", message=message)
    try:
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as exc:  # python-multipart's limits, turned into a 400 by Starlette
        message = f"This form is not one of the console's: {exc.detail}"
        return render(request, console, session, "error.html", status_code=400, title="Form refused", message=message)
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    return fields if session.accepts(fields.get(CSRF_FIELD)) else forbidden(request, console, session)


def forbidden(request: Request, console: Console, session: Session) -> HTMLResponse:
    """The answer to a form without this session's CSRF token."""
    message = "This form has expired or did not come from this console. Reload the page and try again."
    return render(request, console, session, "error.html", status_code=403, title="Form refused", message=message)


def too_large(request: Request, console: Console) -> HTMLResponse:
    """The answer to a body past ``MAX_FORM_BYTES`` (``middleware.BodyTooLarge``)."""
    message = "This form is larger than any of the console's."
    return render(request, console, session_of(request, console), "error.html", status_code=413, title="Form refused",
                  message=message)  # fmt: skip


async def account_of(session: Session, console: Console) -> ManagementKeyInfo | None:
    """The account the session's management key manages, checked now (``None``: not signed in as one, or the
    key was revoked since)."""
    if session.kind != "account" or session.credential_hash is None:
        return None
    info = await console.queries.verify_management_key(session.credential_hash)
    return info if info.status == "valid" and info.account_id is not None else None


async def hoster_of(session: Session, console: Console) -> HosterTokenInfo | None:
    """The hoster the session's console token belongs to, checked now."""
    if session.kind != "hoster" or session.credential_hash is None:
        return None
    info = await console.queries.verify_hoster_token(session.credential_hash)
    return info if info.status == "valid" and info.hoster_id is not None else None


def not_signed_in(request: Request, console: Console, session: Session, kind: SessionKind) -> RedirectResponse:
    """The answer to a page of ``kind`` without its credential: the session ended (``revoked``) when it was
    signed in as that kind and its key or token is no longer valid, else just the sign-in page."""
    if session.kind == kind:
        return signed_out(request, console, "revoked")
    return redirect("/console/signin", request, console)


async def signed_in_account(request: Request, console: Console) -> tuple[Session, str] | Response:
    """The session and the id of the account it manages, or the answer when it is not signed in as one."""
    session = session_of(request, console)
    info = await account_of(session, console)
    if info is None or info.account_id is None:
        return not_signed_in(request, console, session, "account")
    return session, info.account_id


async def signed_in_hoster(request: Request, console: Console) -> tuple[Session, str, str | None] | Response:
    """The session and the id and name of the hoster it is signed in as, or the answer when it is not one."""
    session = session_of(request, console)
    hoster = await hoster_of(session, console)
    if hoster is None or hoster.hoster_id is None:
        return not_signed_in(request, console, session, "hoster")
    return session, hoster.hoster_id, hoster.name


async def hoster_names(console: Console) -> dict[str, str]:
    """Hoster ids to names, as a router knows them (empty when no router answers: pages show ids then)."""
    try:
        listing = await console.queries.hosters()
    except Unavailable:
        return {}
    return {h.hoster_id: h.name for h in listing.hosters}


# --- signing in and out ----------------------------------------------------------------------------------

SIGN_IN_ENDED = {
    "revoked": "Your session ended: the key or token it was signed in with is no longer valid.",
    "signed_out": "You are signed out.",
}


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def home(request: Request, console: ConsoleDep) -> Response:
    """The signed-in visitor's own page, else the sign-in page."""
    session = session_of(request, console)
    target = {"account": "/console/account", "hoster": "/console/hoster"}.get(session.kind, "/console/signin")
    return redirect(target, request, console)


@router.get("/signin", include_in_schema=False)
async def sign_in_page(request: Request, console: ConsoleDep, ended: str | None = None) -> Response:
    """The sign-in forms: an account's management key, or a hoster's console token."""
    session = session_of(request, console)
    return render(request, console, session, "signin.html", notice=SIGN_IN_ENDED.get(ended or ""))


@router.post("/signin", include_in_schema=False)
async def sign_in(request: Request, console: ConsoleDep) -> Response:
    """Check the key or token with billing; a valid one starts a session (a new cookie, a new CSRF token)."""
    session = session_of(request, console)
    form = await form_of(request, console, session)
    if isinstance(form, Response):
        return form
    kind, secret = form.get("kind", ""), form.get("secret", "").strip()
    address = request.client.host if request.client is not None else ""
    now = time.monotonic()
    wait_s = console.sign_ins.wait_s(address, now)
    if wait_s > 0:
        retry = max(1, math.ceil(wait_s))
        refused = f"Too many sign-ins that failed from your address: try again in {retry} s."
        page = render(request, console, session, "signin.html", status_code=429, error=refused, kind=kind)
        page.headers["retry-after"] = str(retry)
        return page
    console.sign_ins.spend(address, now)  # before billing is asked; given back for a right one
    error: str | None = None
    if kind == "account":
        info = await console.queries.verify_management_key(apikeys.hash_key(secret)) if secret else None
        if info is not None and info.status == "valid":
            console.sign_ins.refund(address)
            return redirect(
                "/console/account", request, console, session.signed_in("account", apikeys.hash_key(secret))
            )
        error = {
            "not_management": "That is an inference key: it calls models but cannot manage the account. "
            "Sign in with a management key.",
            "revoked": "That management key has been revoked.",
        }.get(info.status if info else "", "That is not a management key of any account.")
    elif kind == "hoster":
        hoster = await console.queries.verify_hoster_token(apikeys.hash_key(secret)) if secret else None
        if hoster is not None and hoster.status == "valid":
            console.sign_ins.refund(address)
            return redirect("/console/hoster", request, console, session.signed_in("hoster", apikeys.hash_key(secret)))
        error = (
            "That hoster has been revoked."
            if hoster is not None and hoster.status == "revoked"
            else "That is not the console token of any hoster."
        )
    else:
        error = "Choose how to sign in."
    return render(request, console, session, "signin.html", status_code=401, error=error, kind=kind)


@router.post("/signout", include_in_schema=False)
async def sign_out(request: Request, console: ConsoleDep) -> Response:
    """End the session (the cookie goes; a new visitor's session takes its place)."""
    session = session_of(request, console)
    form = await form_of(request, console, session)
    if isinstance(form, Response):
        return form
    response = redirect("/console/signin?ended=signed_out", request, console)
    clear_session_cookie(response, over_tls(request))
    return response


# --- an account ------------------------------------------------------------------------------------------


@router.get("/account", include_in_schema=False)
async def account_page(request: Request, console: ConsoleDep) -> Response:
    """Credits, daily cap and today's spend; spend and tokens per day; recent requests."""
    signed_in = await signed_in_account(request, console)
    if isinstance(signed_in, Response):
        return signed_in
    session, account_id = signed_in
    queries, settings = console.queries, console.settings
    summary, daily, recent, names = await asyncio.gather(
        queries.account(account_id),
        queries.daily_usage(account_id, settings.chart_days),
        queries.requests(account_id, settings.recent_rows),
        hoster_names(console),
    )
    return render(
        request, console, session, "account.html",
        account=service.account_view(summary),
        chart=service.spend_chart(daily.days),
        days=daily.days,
        requests=service.request_rows(recent.items, names),
    )  # fmt: skip


@router.get("/requests/{request_id}", include_in_schema=False)
async def request_page(request_id: str, request: Request, console: ConsoleDep) -> Response:
    """One request's routing record: each attempt's hoster, outcome, times and tokens; what it cost."""
    signed_in = await signed_in_account(request, console)
    if isinstance(signed_in, Response):
        return signed_in
    session, account_id = signed_in
    reply, names = await asyncio.gather(console.queries.generation(account_id, request_id), hoster_names(console))
    if reply.generation is None:
        message = "This account made no request with that id."
        return render(
            request, console, session, "error.html", status_code=404, title="No such request", message=message
        )
    return render(request, console, session, "request.html", record=service.generation_view(reply.generation, names))


async def keys_response(
    request: Request,
    console: Console,
    session: Session,
    account_id: str,
    status_code: int = 200,
    revoked: str | None = None,
    **context: Any,
) -> Response:
    """The keys page; ``revoked`` (a prefix, from the address) is named only if it is one of the account's
    revoked keys."""
    listing = await console.queries.keys(account_id)
    return render(request, console, session, "keys.html", status_code=status_code,
                  keys=service.key_rows(listing.keys), revoked=service.revoked_notice(listing.keys, revoked),
                  **context)  # fmt: skip


@router.get("/keys", include_in_schema=False)
async def keys_page(request: Request, console: ConsoleDep, revoked: str | None = None) -> Response:
    """The account's keys (with when each was last used), a form to create one, a button to revoke each."""
    signed_in = await signed_in_account(request, console)
    if isinstance(signed_in, Response):
        return signed_in
    session, account_id = signed_in
    return await keys_response(request, console, session, account_id, revoked=revoked)


@router.post("/keys", include_in_schema=False)
async def create_key(request: Request, console: ConsoleDep) -> Response:
    """Create an inference key with optional limits; the page shows it this once (nothing keeps it)."""
    session = session_of(request, console)
    form = await form_of(request, console, session)
    if isinstance(form, Response):
        return form
    info = await account_of(session, console)
    if info is None or info.account_id is None:
        return signed_out(request, console, "revoked")
    try:
        new_key = CreateKey(
            account_id=info.account_id,
            label=form.get("label", "").strip() or None,
            rpm=service.optional_limit(form.get("rpm")),
            tpm=service.optional_limit(form.get("tpm")),
        )
    except ValueError:  # a limit that is no whole number from 1, a label too long or with control characters
        error = "Limits are whole numbers from 1 up (blank: no limit); a label is at most 100 printable characters."
        return await keys_response(request, console, session, info.account_id, status_code=400, error=error, form=form)
    created = await console.queries.create_key(new_key)
    return await keys_response(request, console, session, info.account_id, status_code=201, created=created)


@router.post("/keys/{key_id}/revoke", include_in_schema=False)
async def revoke_key(key_id: str, request: Request, console: ConsoleDep) -> Response:
    """Revoke one of the account's keys; requests with it get a 401 within the ingress's key cache time."""
    session = session_of(request, console)
    form = await form_of(request, console, session)
    if isinstance(form, Response):
        return form
    info = await account_of(session, console)
    if info is None or info.account_id is None:
        return signed_out(request, console, "revoked")
    result = await console.queries.revoke_key(info.account_id, key_id)
    if result.key is None:
        message = "This account has no key with that id."
        return render(request, console, session, "error.html", status_code=404, title="No such key", message=message)
    return redirect(f"/console/keys?revoked={result.key.prefix}", request, console)


# --- a hoster --------------------------------------------------------------------------------------------


@router.get("/hoster", include_in_schema=False)
async def hoster_page(request: Request, console: ConsoleDep) -> Response:
    """Live status, models and prices, spot check verdicts and their evidence, requests and earnings per day,
    trust and its terms, recent attempts."""
    signed_in = await signed_in_hoster(request, console)
    if isinstance(signed_in, Response):
        return signed_in
    session, hoster_id, name = signed_in
    queries, settings = console.queries, console.settings
    detail, days, attempts, names = await asyncio.gather(
        queries.hoster_detail(hoster_id),
        queries.hoster_days(hoster_id, settings.chart_days),
        queries.hoster_attempts(hoster_id, settings.recent_rows),
        hoster_names(console),
    )
    return render(
        request, console, session, "hoster.html",
        name=name or hoster_id,
        hoster_id=hoster_id,
        live=service.hoster_view(detail.hoster, names) if detail.hoster is not None else None,
        days=days.days,
        earned_total=service.credits(days.earned_total),
        requests_chart=service.hoster_requests_chart(days.days),
        earnings_chart=service.earnings_chart(days.days),
        attempts=service.hoster_attempt_rows(attempts.items),
        credits=service.credits,
    )  # fmt: skip


# --- the public network page ---------------------------------------------------------------------------


@router.get("/network", include_in_schema=False)
async def network_page(request: Request, console: ConsoleDep) -> Response:
    """Live models with price ranges, hoster counts and speed; every hoster with its own. Public."""
    session = session_of(request, console)
    models, hosters = await asyncio.gather(console.queries.live_models(), console.queries.hosters())
    return render(
        request, console, session, "network.html", network=service.network_view(models.models, hosters.hosters)
    )


@router.get("/static/vendor/chart.umd.min.js", include_in_schema=False)
async def chart_library(console: ConsoleDep) -> Response:
    """Chart.js, from the console's own ``node_modules`` (``make deps`` installs it from package-lock.json)."""
    return FileResponse(
        console.settings.vendor_dir / CHART_JS,
        media_type="text/javascript",
        headers={"cache-control": "public, max-age=86400"},
    )
