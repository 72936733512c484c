"""The Responses API (``/v1/responses``) through the whole stack with the official openai SDK, as a user of
it would call it: created, streamed, stored, continued, deleted, and money as on chat."""

from __future__ import annotations

import json
from collections.abc import Iterator

import asyncpg
import openai
import pytest
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack
from tests.e2e.records import routing_record

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Answers of 40 tokens: longer than the least ``max_output_tokens`` OpenAI takes (16), so one can be cut."""
    running = build_stack(reply_tokens=40)
    yield running
    running.stop()


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0, timeout=30)


async def stored_rows(stack: Stack, response_id: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM stored_responses WHERE id = $1", response_id))
    finally:
        await conn.close()


def test_a_string_input_is_answered_stored_and_billed_like_a_chat(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    raw = sdk.responses.with_raw_response.create(model=DEMO_MODEL, input="Write a haiku about GPUs",
                                                 instructions="Be terse.")  # fmt: skip
    response = raw.parse()
    assert raw.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert response.usage.input_tokens > 0
    record = routing_record(stack, api_key, response.id)
    assert record["completion_tokens"] == response.usage.output_tokens
    assert record["endpoint"] == "responses"  # the API the client called, served by the hosters as a chat
    again = sdk.responses.retrieve(response.id)
    assert again.id == response.id
    assert again.output_text == response.output_text
    items = sdk.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]


def test_a_stream_passes_the_sdks_own_parser_and_is_stored(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    types: list[str] = []
    with sdk.responses.stream(model=DEMO_MODEL, input=[{"role": "user", "content": "stream me"}]) as stream:
        text = ""
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_text.done" in types
    assert final.output_text == text
    assert sdk.responses.retrieve(final.id).output_text == text


def test_previous_response_id_continues_over_three_turns(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    first = sdk.responses.create(model=DEMO_MODEL, input="one")
    second = sdk.responses.create(model=DEMO_MODEL, input="two", previous_response_id=first.id)
    third = sdk.responses.create(model=DEMO_MODEL, input="three", previous_response_id=second.id)
    assert third.previous_response_id == second.id
    # The prompt grows with the replayed conversation, and is billed as sent.
    assert first.usage is not None
    assert second.usage is not None
    assert third.usage is not None
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens


def test_a_function_call_round_trip(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False}  # fmt: skip
    tools: list[FunctionToolParam] = [
        {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": parameters,
         "strict": True}
    ]  # fmt: skip
    called = sdk.responses.create(model=DEMO_MODEL, input="weather in paris?", tools=tools, tool_choice="required")
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert "city" in json.loads(call.arguments)
    answered = sdk.responses.create(
        model=DEMO_MODEL, previous_response_id=called.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}],
    )  # fmt: skip
    assert answered.status == "completed"
    assert answered.output_text


def test_a_json_schema_format_and_a_cut_answer(stack: Stack, api_key: str) -> None:
    class City(BaseModel):
        name: str
        population: int

    sdk = client(stack, api_key)
    parsed = sdk.responses.parse(model=DEMO_MODEL, input="a city", text_format=City)
    assert isinstance(parsed.output_parsed, City)
    cut = sdk.responses.create(model=DEMO_MODEL, input="a long story", max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


async def test_another_account_gets_404_a_deleted_one_is_gone_and_store_false_keeps_nothing(
    stack: Stack, api_key: str
) -> None:
    sdk = client(stack, api_key)
    mine = sdk.responses.create(model=DEMO_MODEL, input="private")
    _, other_key = stack.create_account(credits="1")
    stranger = client(stack, other_key)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=DEMO_MODEL, input="x", previous_response_id=mine.id)
    sdk.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(mine.id)
    unstored = sdk.responses.create(model=DEMO_MODEL, input="forget me", store=False)
    assert await stored_rows(stack, unstored.id) == 0
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


def test_a_built_in_tool_is_a_400_naming_it(stack: Stack, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(stack, api_key).responses.create(model=DEMO_MODEL, input="x", tools=[{"type": "web_search"}])
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert str(info.value.body.get("param", "")).startswith("tools")


async def test_a_privacy_mode_request_is_stored_only_when_the_client_asked_in_so_many_words(
    stack: Stack, api_key: str
) -> None:
    sdk = client(stack, api_key)
    private = sdk.responses.create(model=DEMO_MODEL, input="secret", extra_body={"privacy_mode": True})
    assert private.status == "completed"
    assert await stored_rows(stack, private.id) == 0
    asked = sdk.responses.create(model=DEMO_MODEL, input="keep it", store=True, extra_body={"privacy_mode": True})
    assert await stored_rows(stack, asked.id) == 1
    assert sdk.responses.retrieve(asked.id).id == asked.id
