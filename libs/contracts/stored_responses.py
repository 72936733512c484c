"""Responses API storage: the responses billing stores for an account (``store: true``), for the ingress to
read back, delete, list the input items of and continue (``previous_response_id``).

A stored response is the Response object as the client received it and the input items of its request, each
item as OpenAI's input item list shows it (with its ``id``). Continuing a response replays its chain, oldest
first: each response's input items, then its output items.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from libs.contracts.common import Contract

# OpenAI's ids: ``resp_`` and 48 hexadecimal digits; ours are of that shape (``new_response_id``).
ResponseId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
# The longest chain ``previous_response_id`` may replay: past it, a 400 (a loop of ids cannot be made, since
# a response names only an earlier one, but a very long conversation is refused rather than replayed).
MAX_CHAIN = 1000


class StoreResponse(Contract):
    """ingress -> billing (request/reply): keep ``response`` (the Response object) and its request's
    ``input_items`` for ``account_id``, for billing's retention (``CS_BILLING_RESPONSES_RETENTION_DAYS``)."""

    response_id: ResponseId
    account_id: str
    created_at: int = Field(ge=0)
    previous_response_id: ResponseId | None = None
    input_items: list[dict[str, Any]]
    response: dict[str, Any]


class Stored(Contract):
    """billing -> ingress: whether a store, or a delete, took effect."""

    ok: bool


class ResponseQuery(Contract):
    """ingress -> billing (request/reply): ``response_id`` of ``account_id``: show it, delete it, or its
    chain for a continuation. Another account's response is not found."""

    response_id: ResponseId
    account_id: str


class ChainQuery(ResponseQuery):
    """ingress -> billing (request/reply): the chain of ``response_id`` to continue; its items, as JSON, may
    take at most ``max_bytes`` (what the ingress can route in one message: billing's reply must fit one too)."""

    max_bytes: int = Field(ge=1)


class StoredResponse(Contract):
    """billing -> ingress: a stored response (``found``), as the client received it."""

    found: bool
    response: dict[str, Any] | None = None


class ResponseChain(Contract):
    """billing -> ingress: the items a continuation of the response replays, oldest first (each response's
    input items, then its output items); ``found`` false when the response (or one it continued) is not
    stored for the account, ``too_long`` when the chain passes ``MAX_CHAIN`` responses or the query's
    ``max_bytes`` (``items`` empty then)."""

    found: bool
    too_long: bool = False
    items: list[dict[str, Any]] = Field(default_factory=list)


class InputItemsQuery(Contract):
    """ingress -> billing (request/reply): a page of a stored response's input items, as OpenAI pages them:
    ``limit`` (1-100), ``order`` (``desc`` by default: the newest first), after / before an item id."""

    response_id: ResponseId
    account_id: str
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


class InputItemsPage(Contract):
    """billing -> ingress: the page (``found`` false: no such response for the account)."""

    found: bool
    data: list[dict[str, Any]] = Field(default_factory=list)
    has_more: bool = False
