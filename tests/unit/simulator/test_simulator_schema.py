"""Every body and stream chunk the simulator sends validates against OpenAI's published response schemas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from services.simulator.app import build_app
from services.simulator.settings import SimulatorSettings
from tests.openai_schema import json_schema, openai_validator

PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
ANSWER_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"summary": {"type": "string"}, "sources": {"type": "array", "items": {"type": "string"}}},
            "required": ["summary", "sources"],
            "additionalProperties": False,
        },
    },
}

CASES: dict[str, dict[str, Any]] = {
    "plain text": {},
    "cut by max_tokens": {"max_tokens": 3},
    "n=2": {"n": 2},
    "one tool": {"tools": [WEATHER_TOOL], "tool_choice": "required"},
    "parallel tools, n=2": {"tools": [WEATHER_TOOL, TIME_TOOL], "n": 2},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {"response_format": ANSWER_FORMAT},
    "logprobs with top_logprobs": {"logprobs": True, "top_logprobs": 5},
    "logprobs on tool calls": {"logprobs": True, "tools": [WEATHER_TOOL]},
    "reasoning": {"reasoning_effort": "medium"},
    "reasoning then tools": {"reasoning_effort": "low", "tools": [WEATHER_TOOL]},
    "stop": {"stop": [" the", " a"]},
    "everything": {"n": 3, "logprobs": True, "top_logprobs": 2, "reasoning_effort": "minimal", "max_tokens": 6},
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(SimulatorSettings(reply_tokens=8)))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


async def post(client: httpx.AsyncClient, fields: dict[str, Any]) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json={"model": "demo-model", "messages": PROMPT, **fields})
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("fields", CASES.values(), ids=CASES.keys())
async def test_completion_matches_create_chat_completion_response(
    client: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    body = (await post(client, fields)).json()

    openai_validator("CreateChatCompletionResponse").validate(body)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("fields", CASES.values(), ids=CASES.keys())
async def test_every_chunk_matches_create_chat_completion_stream_response(
    client: httpx.AsyncClient, fields: dict[str, Any], include_usage: bool
) -> None:
    response = await post(client, {**fields, "stream": True, "stream_options": {"include_usage": include_usage}})

    events = [event.removeprefix(b"data: ") for event in response.content.split(b"\n\n") if event]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    validator = openai_validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        validator.validate(chunk)
    assert (chunks[-1]["choices"] == []) is include_usage


def valid_chunk(**choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None, **choice}],
    }


@pytest.mark.parametrize(
    "broken",
    [
        {"finish_reason": "done"},
        {"index": None},
        {"delta": {"role": "robot"}},
        {"delta": {"tool_calls": [{"id": "call_1"}]}},
        {"logprobs": {"content": [{"token": "hi", "logprob": -1, "bytes": None}], "refusal": None}},
    ],
)
def test_the_stream_validator_rejects_what_openai_never_sends(broken: dict[str, Any]) -> None:
    validator = openai_validator("CreateChatCompletionStreamResponse")
    validator.validate(valid_chunk())

    with pytest.raises(jsonschema.ValidationError):
        validator.validate(valid_chunk(**broken))


def test_the_stream_validator_accepts_null_where_openai_marks_it_nullable() -> None:
    validator = openai_validator("CreateChatCompletionStreamResponse")

    validator.validate({**valid_chunk(finish_reason=None, logprobs=None), "usage": None})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**valid_chunk(), "model": None})


def test_the_completion_validator_requires_message_content_and_refusal() -> None:
    validator = openai_validator("CreateChatCompletionResponse")
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }
    validator.validate(body)

    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(body)


def test_unknown_schema_names_fail_loudly() -> None:
    with pytest.raises(KeyError):
        openai_validator("NoSuchSchema")


@pytest.mark.parametrize(
    ("openapi", "expected"),
    [
        ({"type": "string", "nullable": True}, {"anyOf": [{"type": "string"}, {"type": "null"}]}),
        ({"type": "string", "nullable": False}, {"type": "string"}),
        (
            {"$ref": "#/components/schemas/X", "nullable": True},
            {"anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]},
        ),
        (
            {"allOf": [{"$ref": "#/components/schemas/X"}, {"nullable": True, "description": "maybe"}]},
            {"anyOf": [{"allOf": [{"$ref": "#/components/schemas/X"}]}, {"type": "null"}]},
        ),
        (
            {"type": "object", "properties": {"nullable": {"type": "integer", "nullable": True}}},
            {"type": "object", "properties": {"nullable": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}},
        ),
        ({"type": "number", "minimum": 0, "exclusiveMinimum": True}, {"type": "number", "exclusiveMinimum": 0}),
        ({"type": "number", "maximum": 2, "exclusiveMaximum": False}, {"type": "number", "maximum": 2}),
        ({"example": {"nullable": True}, "enum": ["a"]}, {"example": {"nullable": True}, "enum": ["a"]}),
    ],
)
def test_openapi_keywords_become_json_schema(openapi: dict[str, Any], expected: dict[str, Any]) -> None:
    assert json_schema(openapi) == expected
