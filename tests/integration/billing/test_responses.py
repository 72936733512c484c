"""The Responses API's stored responses against a real PostgreSQL: only the account's own, a chain replayed
oldest first, input items paged as OpenAI pages them, expired ones gone."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from libs.contracts.stored_responses import ChainQuery, InputItemsQuery, ResponseQuery, StoreResponse
from services.billing.ledger import Ledger
from services.billing.responses import ResponseStore

pytestmark = pytest.mark.integration


def message(item_id: str, role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def stored(response_id: str, account_id: str, inputs: list[dict[str, Any]], answer: str,
           previous: str | None = None) -> StoreResponse:  # fmt: skip
    response = {"id": response_id, "object": "response", "status": "completed",
                "output": [message(f"msg_{response_id}", "assistant", answer)]}  # fmt: skip
    return StoreResponse(response_id=response_id, account_id=account_id, created_at=int(time.time()),
                         previous_response_id=previous, input_items=inputs, response=response)  # fmt: skip


def chain_query(response_id: str, account_id: str, max_bytes: int = 1 << 20) -> ChainQuery:
    return ChainQuery(response_id=response_id, account_id=account_id, max_bytes=max_bytes)


async def test_a_response_is_its_accounts_alone_and_a_deleted_one_is_gone(ledger: Ledger) -> None:
    store = ResponseStore(3600)
    store.attach(ledger.pool)
    mine = (await ledger.create_account("mine", 0)).id
    theirs = (await ledger.create_account("theirs", 0)).id
    event = stored("resp_a1", mine, [message("msg_in1", "user", "hi")], "hello")
    assert await store.store(event)
    assert not await store.store(event)  # stored once
    shown = await store.show(ResponseQuery(response_id="resp_a1", account_id=mine))
    assert shown.found
    assert shown.response == event.response
    query = ResponseQuery(response_id="resp_a1", account_id=theirs)
    assert not (await store.show(query)).found
    assert not (await store.input_items(InputItemsQuery(response_id="resp_a1", account_id=theirs))).found
    assert not (await store.chain(chain_query("resp_a1", theirs))).found
    assert not await store.delete(query)
    assert await store.delete(ResponseQuery(response_id="resp_a1", account_id=mine))
    assert not (await store.show(ResponseQuery(response_id="resp_a1", account_id=mine))).found
    assert not await store.delete(ResponseQuery(response_id="resp_a1", account_id=mine))


async def test_a_chain_replays_each_responses_input_then_output_oldest_first(ledger: Ledger) -> None:
    store = ResponseStore(3600)
    store.attach(ledger.pool)
    account = (await ledger.create_account("chat", 0)).id
    await store.store(stored("resp_c1", account, [message("msg_1", "user", "one")], "first"))
    await store.store(stored("resp_c2", account, [message("msg_2", "user", "two")], "second", previous="resp_c1"))
    await store.store(stored("resp_c3", account, [message("msg_3", "user", "three")], "third", previous="resp_c2"))
    chain = await store.chain(chain_query("resp_c3", account))
    texts = [item["content"][0]["text"] for item in chain.items]
    assert chain.found
    assert texts == ["one", "first", "two", "second", "three", "third"]
    # Past the bytes the ingress can route, it is too long, and nothing of it is sent back.
    size = len(orjson.dumps(chain.items))
    assert (await store.chain(chain_query("resp_c3", account, size))).items == chain.items
    too_long = await store.chain(chain_query("resp_c3", account, size - 1))
    assert (too_long.found, too_long.too_long, too_long.items) == (True, True, [])
    # A link deleted from the middle: the conversation cannot be replayed whole.
    await store.delete(ResponseQuery(response_id="resp_c2", account_id=account))
    assert not (await store.chain(chain_query("resp_c3", account))).found


async def test_input_items_are_paged_newest_first_by_default_with_after_and_before(ledger: Ledger) -> None:
    store = ResponseStore(3600)
    store.attach(ledger.pool)
    account = (await ledger.create_account("pages", 0)).id
    inputs = [message(f"msg_{i}", "user", str(i)) for i in range(5)]
    await store.store(stored("resp_p", account, inputs, "ok"))

    async def ids(**paging: Any) -> tuple[list[str], bool]:
        page = await store.input_items(InputItemsQuery(response_id="resp_p", account_id=account, **paging))
        return [item["id"] for item in page.data], page.has_more

    assert await ids() == (["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"], False)
    assert await ids(limit=2) == (["msg_4", "msg_3"], True)
    assert await ids(limit=2, after="msg_3") == (["msg_2", "msg_1"], True)
    assert await ids(order="asc", after="msg_3") == (["msg_4"], False)
    assert await ids(order="asc", before="msg_2") == (["msg_0", "msg_1"], False)


async def test_an_expired_response_is_not_found_and_the_sweep_deletes_it(ledger: Ledger) -> None:
    account = (await ledger.create_account("old", 0)).id
    past = ResponseStore(-1.0)  # kept for less than nothing: expired when stored
    past.attach(ledger.pool)
    await past.store(stored("resp_old", account, [], "gone"))
    assert not (await past.show(ResponseQuery(response_id="resp_old", account_id=account))).found
    assert await past.sweep() >= 1
    async with ledger.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM stored_responses WHERE id = 'resp_old'") == 0


async def test_text_with_nul_characters_is_stored_with_them_replaced(ledger: Ledger) -> None:
    """PostgreSQL's jsonb holds no U+0000: a client's input or a model's output with one is stored with U+FFFD
    in its place, not refused (the client was served and billed: storing it must not fail)."""
    store = ResponseStore(3600)
    store.attach(ledger.pool)
    account = (await ledger.create_account("nul", 0)).id
    assert await store.store(stored("resp_nul", account, [message("msg_n", "user", "a\x00b \\u0000")], "c\x00d"))
    query = ResponseQuery(response_id="resp_nul", account_id=account)
    chain = await store.chain(chain_query("resp_nul", account))
    assert [item["content"][0]["text"] for item in chain.items] == ["a\ufffdb \\u0000", "c\ufffdd"]
    shown = await store.show(query)
    assert shown.response is not None
    assert shown.response["output"][0]["content"][0]["text"] == "c\ufffdd"
