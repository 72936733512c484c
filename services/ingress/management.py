"""The management API: what a management key does to its own account (OpenRouter's provisioning-key API).

Every route answers only within the account the management key belongs to; billing enforces it (each query
names that account), so another account's key id is a 404 exactly like one that does not exist.

A body is read only once its key was checked, and at most ``MAX_MANAGEMENT_BODY_BYTES`` of it: the routes take
the ``Request`` and parse the body themselves (``openapi.REQUEST_BODIES`` documents it), since FastAPI reads a
body parameter whole before any dependency runs.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, RootModel, ValidationError

from libs.contracts import errors, subjects
from libs.contracts.billing import KeyInfo
from libs.contracts.management import (
    MAX_DAYS,
    AccountKeyQuery,
    AccountQuery,
    AccountSummary,
    CreatedKey,
    CreateKey,
    DailyUsageQuery,
    DailyUsageReport,
    KeyListing,
    KeyResult,
    ManagedKey,
    RevokeKey,
    SetKeyLimits,
)
from libs.contracts.pricing import to_credits
from services.ingress.gateway import GatewayError
from services.ingress.handlers import GatewayDep, ManagerDep, SettingsDep, invalid_request, read_json_body
from services.ingress.openapi import (
    Account,
    AccountUsage,
    ApiKeyDocument,
    ApiKeyList,
    CreatedApiKey,
    KeyChange,
    NewKey,
    RevokedApiKey,
)
from services.ingress.openapi import errors as documented

router = APIRouter()

# A management body is a label of at most 100 characters and two limits: 4 KiB is many times what one needs.
MAX_MANAGEMENT_BODY_BYTES = 4 * 1024

Body = TypeVar("Body", bound=BaseModel)


class _MaybeSummary(RootModel[AccountSummary | None]):
    """billing's answer to ``billing.account.show``: the summary, or null for an account that is gone."""


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def api_key(key: ManagedKey) -> dict[str, Any]:
    """A key as the management API shows it."""
    return {
        "id": key.key_id,
        "object": "api_key",
        "label": key.label,
        "prefix": key.prefix,
        "kind": key.kind,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "created": int(key.created_at),
        "revoked": key.revoked_at is not None,
        "revoked_at": _seconds(key.revoked_at),
        "last_used_at": _seconds(key.last_used_at),
    }


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[Body]) -> Body | Response:
    """The body as ``model`` (at most ``MAX_MANAGEMENT_BODY_BYTES``, sent as JSON), or the 400 that refuses it."""
    raw = await read_json_body(request, MAX_MANAGEMENT_BODY_BYTES)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        if param is None:  # not a JSON object at all
            return invalid_request(f"Invalid request body: {error['msg']}")
        return invalid_request(f"Invalid value for '{param}': {error['msg']}", param)


def _found(result: KeyResult, key_id: str) -> ManagedKey:
    """The key, or the 404 that says nothing of whether another account has it."""
    if result.key is None:
        raise GatewayError(errors.key_not_found(key_id))
    return result.key


def _account_of(manager: KeyInfo) -> str:
    account_id: str | None = manager.account_id
    assert account_id is not None  # a verified key always has its account
    return account_id


@router.get("/v1/keys", response_model=None, responses={200: {"model": ApiKeyList}, **documented(401, 403, 503)})
async def list_keys(manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Every key of the account (both kinds), newest first, revoked ones included, with its last use."""
    query = AccountQuery(account_id=_account_of(manager))
    listing = await gateway.manage(subjects.LIST_ACCOUNT_KEYS, query, KeyListing, settings.retry_after_s)
    return _json({"object": "list", "data": [api_key(k) for k in listing.keys]})


@router.post(
    "/v1/keys",
    response_model=None,
    status_code=201,
    responses={201: {"model": CreatedApiKey}, **documented(400, 401, 403, 413, 415, 503)},
)
async def create_key(request: Request, manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """A new inference key of the account, with an optional label and limits. The key is in this answer only:
    store it now."""
    body = await _body(request, NewKey)
    if isinstance(body, Response):
        return body
    command = CreateKey(account_id=_account_of(manager), label=body.label, rpm=body.rpm, tpm=body.tpm)
    created = await gateway.manage(subjects.CREATE_ACCOUNT_KEY, command, CreatedKey, settings.retry_after_s)
    return _json({"key": created.key, "data": api_key(created.info)}, status=201)


@router.get(
    "/v1/keys/{key_id}",
    response_model=None,
    responses={200: {"model": ApiKeyDocument}, **documented(401, 403, 404, 503)},
)
async def show_key(key_id: str, manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """One key of the account."""
    query = AccountKeyQuery(account_id=_account_of(manager), key_id=key_id)
    result = await gateway.manage(subjects.SHOW_ACCOUNT_KEY, query, KeyResult, settings.retry_after_s)
    return _json({"data": api_key(_found(result, key_id))})


@router.patch(
    "/v1/keys/{key_id}",
    response_model=None,
    responses={200: {"model": ApiKeyDocument}, **documented(400, 401, 403, 404, 413, 415, 503)},
)
async def update_key(
    key_id: str, request: Request, manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep
) -> Response:
    """Change a key's ``rpm``, ``tpm`` or ``label``: only the fields sent change, ``null`` clears one. Every
    ingress replica uses the new limits within a moment."""
    body = await _body(request, KeyChange)
    if isinstance(body, Response):
        return body
    command = SetKeyLimits(
        account_id=_account_of(manager),
        key_id=key_id,
        update=sorted(body.model_fields_set),  # the body's fields: rpm, tpm, label
        rpm=body.rpm,
        tpm=body.tpm,
        label=body.label,
    )
    result = await gateway.manage(subjects.UPDATE_ACCOUNT_KEY, command, KeyResult, settings.retry_after_s)
    return _json({"data": api_key(_found(result, key_id))})


@router.delete(
    "/v1/keys/{key_id}",
    response_model=None,
    responses={200: {"model": RevokedApiKey}, **documented(401, 403, 404, 503)},
)
async def revoke_key(key_id: str, manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Revoke a key of the account (either kind, this one too): every ingress replica refuses it within
    seconds."""
    command = RevokeKey(account_id=_account_of(manager), key_id=key_id)
    result = await gateway.manage(subjects.REVOKE_ACCOUNT_KEY, command, KeyResult, settings.retry_after_s)
    return _json({"deleted": True, "data": api_key(_found(result, key_id))})


@router.get("/v1/account", response_model=None, responses={200: {"model": Account}, **documented(401, 403, 503)})
async def show_account(manager: ManagerDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """The account's money now: balance, credits held by open requests, today's spend and the daily cap."""
    query = AccountQuery(account_id=_account_of(manager))
    reply = await gateway.manage(subjects.SHOW_ACCOUNT, query, _MaybeSummary, settings.retry_after_s)
    summary = reply.root
    if summary is None:
        raise GatewayError(errors.unauthorized("This API key's account no longer exists."))
    return _json(
        {
            "object": "account",
            "id": summary.account_id,
            "name": summary.name,
            "balance": to_credits(summary.balance),
            "reserved": to_credits(summary.reserved),
            "spent_today": to_credits(summary.spent_today),
            "daily_cap": None if summary.daily_cap is None else to_credits(summary.daily_cap),
            "created": int(summary.created_at),
        }
    )


@router.get(
    "/v1/account/usage", response_model=None, responses={200: {"model": AccountUsage}, **documented(400, 401, 403, 503)}
)
async def account_usage(
    manager: ManagerDep,
    gateway: GatewayDep,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30,
) -> Response:
    """The account's requests, tokens and spend per UTC day over the last ``days`` days (today included),
    oldest first, days without requests as zeros."""
    query = DailyUsageQuery(account_id=_account_of(manager), days=days)
    report = await gateway.manage(subjects.ACCOUNT_DAILY_USAGE, query, DailyUsageReport, settings.retry_after_s)
    data = [
        {
            "date": d.day,
            "requests": d.requests,
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens,
            "spend": to_credits(d.spend),
        }
        for d in report.days
    ]
    return _json({"object": "list", "data": data})
