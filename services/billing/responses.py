"""The Responses API's stored responses: kept per account until they expire, read back, listed, continued."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from libs.contracts.stored_responses import (
    MAX_CHAIN,
    ChainQuery,
    InputItemsPage,
    InputItemsQuery,
    ResponseChain,
    ResponseQuery,
    StoredResponse,
    StoreResponse,
)
from services.billing.repository import PoolBound


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


# U+0000 as JSON writes it; PostgreSQL's jsonb refuses it in any string.
_NUL = b"\\u0000"


def _without_nul(value: Any) -> Any:
    """``value`` with every U+0000 of its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def jsonb(value: Any) -> str:
    """``value`` as the JSON text a jsonb column takes: a client's text, or a model's, may hold U+0000, which
    jsonb cannot, so it is stored as U+FFFD (the request was served and billed: storing it must not fail)."""
    encoded = orjson.dumps(value)
    if _NUL in encoded:
        encoded = orjson.dumps(_without_nul(value))
    return encoded.decode()


def page_of(items: list[dict[str, Any]], query: InputItemsQuery) -> tuple[list[dict[str, Any]], bool]:
    """One page of ``items`` (in the order they were given) as OpenAI's list endpoints page: ordered by
    ``query.order``, after / before the item with that id, ``query.limit`` of them, and whether more follow."""
    ordered = items if query.order == "asc" else list(reversed(items))
    ids = [item.get("id") for item in ordered]
    start, end = 0, len(ordered)
    if query.after is not None:
        start = ids.index(query.after) + 1 if query.after in ids else len(ordered)
    if query.before is not None and query.before in ids:
        end = ids.index(query.before)
    window = ordered[start:end]
    return window[: query.limit], len(window) > query.limit


class ResponseStore(PoolBound):
    """Stored responses in ``stored_responses``; an expired one is as good as gone (``sweep`` deletes it)."""

    def __init__(self, retention_s: float) -> None:
        super().__init__()
        self.retention_s = retention_s

    async def store(self, event: StoreResponse) -> bool:
        """Keep ``event``'s response for ``retention_s`` from its creation; ``False`` when one of that id is
        stored already (nothing changes)."""
        status = await self.pool.execute(
            """INSERT INTO stored_responses
                   (id, account_id, created_at, expires_at, previous_response_id, input_items, response)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb) ON CONFLICT (id) DO NOTHING""",
            event.response_id,
            event.account_id,
            datetime.fromtimestamp(event.created_at, UTC),
            datetime.fromtimestamp(event.created_at + self.retention_s, UTC),
            event.previous_response_id,
            jsonb(event.input_items),
            jsonb(event.response),
        )
        return bool(status == "INSERT 0 1")

    async def _owned(self, column: str, query: ResponseQuery | InputItemsQuery) -> Any:
        """``column`` of the account's unexpired response ``query`` names, ``None`` when there is none."""
        value = await self.pool.fetchval(
            f"SELECT {column} FROM stored_responses WHERE id = $1 AND account_id = $2 AND expires_at > now()",
            query.response_id,
            query.account_id,
        )
        return None if value is None else _json(value)

    async def show(self, query: ResponseQuery) -> StoredResponse:
        """The stored response, for its own account only."""
        response = await self._owned("response", query)
        return StoredResponse(found=response is not None, response=response)

    async def delete(self, query: ResponseQuery) -> bool:
        """Delete the stored response of the account; ``False`` when there was none."""
        status = await self.pool.execute(
            "DELETE FROM stored_responses WHERE id = $1 AND account_id = $2 AND expires_at > now()",
            query.response_id,
            query.account_id,
        )
        return bool(status == "DELETE 1")

    async def input_items(self, query: InputItemsQuery) -> InputItemsPage:
        """A page of the stored response's input items."""
        items = await self._owned("input_items", query)
        if items is None:
            return InputItemsPage(found=False)
        data, more = page_of(items, query)
        return InputItemsPage(found=True, data=data, has_more=more)

    async def chain(self, query: ChainQuery) -> ResponseChain:
        """What continuing the response replays, oldest first: each response's input items, then its output
        items, back to the first of the conversation; not found if any response of it is gone, too long past
        ``MAX_CHAIN`` responses or ``query.max_bytes`` of JSON."""
        rows = await self.pool.fetch(
            """WITH RECURSIVE chain AS (
                   SELECT id, previous_response_id, input_items, response -> 'output' AS output, 1 AS depth
                   FROM stored_responses WHERE id = $1 AND account_id = $2 AND expires_at > now()
                 UNION ALL
                   SELECT s.id, s.previous_response_id, s.input_items, s.response -> 'output', c.depth + 1
                   FROM stored_responses s JOIN chain c ON s.id = c.previous_response_id
                   WHERE s.account_id = $2 AND s.expires_at > now() AND c.depth <= $3
               )
               SELECT previous_response_id, input_items, output, depth FROM chain ORDER BY depth DESC""",
            query.response_id,
            query.account_id,
            MAX_CHAIN,
        )
        if not rows:
            return ResponseChain(found=False)
        if len(rows) > MAX_CHAIN:
            return ResponseChain(found=True, too_long=True)
        if rows[0]["previous_response_id"] is not None:
            return ResponseChain(found=False)  # the oldest one it names is gone
        items: list[dict[str, Any]] = []
        for row in rows:
            items.extend(_json(row["input_items"]))
            items.extend(_json(row["output"]) or [])
        if len(orjson.dumps(items)) > query.max_bytes:
            return ResponseChain(found=True, too_long=True)
        return ResponseChain(found=True, items=items)

    async def sweep(self) -> int:
        """Delete the expired responses; how many."""
        status = await self.pool.execute("DELETE FROM stored_responses WHERE expires_at <= now()")
        return int(status.split()[-1])
