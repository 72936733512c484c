"""OpenAI's shapes for a simulated reply: the whole completion, its stream chunks and their SSE framing."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.simulator.chat_request import ChatCompletionRequest
from services.simulator.responses import (
    choice_chunks,
    completion,
    completion_chunk,
    finish_chunk,
    new_completion,
    sse_event,
    usage_chunk,
)
from services.simulator.service import plan_reply

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 3},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def chat(content: Any = "Tell me about the network.", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "demo-model", "messages": [{"role": "user", "content": content}], **fields}
    )


def test_completion_has_openai_shape() -> None:
    meta = new_completion("demo-model")
    reply = plan_reply(chat(), 3)

    body = completion(meta, reply)

    assert re.fullmatch(r"chatcmpl-sim-[0-9a-f]{32}", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "demo-model"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": reply.choices[0].content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == reply.usage()


def test_completion_ids_are_unique() -> None:
    assert new_completion("m").id != new_completion("m").id


def test_chunk_has_openai_shape_and_no_usage_unless_asked() -> None:
    meta = new_completion("demo-model")

    chunk = completion_chunk(meta, {"content": " word"})

    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["id"] == meta.id
    assert chunk["choices"] == [{"index": 0, "delta": {"content": " word"}, "logprobs": None, "finish_reason": None}]
    assert "usage" not in chunk


def test_chunks_carry_null_usage_when_the_stream_includes_usage() -> None:
    chunk = completion_chunk(new_completion("demo-model"), {}, "length", include_usage=True)

    assert chunk["usage"] is None
    assert chunk["choices"][0]["finish_reason"] == "length"


def test_usage_chunk_has_no_choices() -> None:
    reply = plan_reply(chat(), 2)

    chunk = usage_chunk(new_completion("demo-model"), reply)

    assert chunk["choices"] == []
    assert chunk["usage"] == reply.usage()


def test_sse_event_is_one_data_line_and_a_blank_line() -> None:
    event = sse_event({"a": 1})

    assert event == b'data: {"a":1}\n\n'
    assert orjson.loads(event.removeprefix(b"data: ")) == {"a": 1}


def test_stream_chunks_of_a_tool_call_open_with_its_name_then_stream_arguments() -> None:
    meta = new_completion("demo-model")
    [choice] = plan_reply(chat(tools=TOOLS), 4).choices
    weather, clock = choice.tool_calls

    deltas = [chunk["choices"][0]["delta"] for chunk in choice_chunks(meta, choice, include_usage=False)]

    assert deltas[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"index": 0, "id": weather.id, "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ],
    }
    first_call = len(weather.argument_pieces())
    assert [delta["tool_calls"][0]["function"]["arguments"] for delta in deltas[1 : 1 + first_call]] == (
        weather.argument_pieces()
    )
    assert deltas[1 + first_call] == {
        "tool_calls": [
            {"index": 1, "id": clock.id, "type": "function", "function": {"name": "get_time", "arguments": ""}}
        ]
    }
    assert deltas[2 + first_call :] == [{"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}]
    assert finish_chunk(meta, choice, include_usage=False)["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


def test_stream_chunks_think_then_answer_with_each_token_logprobs() -> None:
    meta = new_completion("demo-model")
    [choice] = plan_reply(chat(logprobs=True, reasoning_effort="minimal", n=2), 3).choices[1:]

    chunks = list(choice_chunks(meta, choice, include_usage=True))

    assert all(chunk["choices"][0]["index"] == 1 and chunk["usage"] is None for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:3] == [{"reasoning_content": token} for token in choice.reasoning]
    assert deltas[3:] == [{"content": token} for token in choice.tokens]
    assert [chunk["choices"][0]["logprobs"] for chunk in chunks[:3]] == [None] * 3
    assert choice.logprobs is not None
    assert [chunk["choices"][0]["logprobs"] for chunk in chunks[3:]] == [
        {"content": [entry], "refusal": None} for entry in choice.logprobs
    ]


AFTER_A_TOOL_RESULT: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Validation error: unit is required."},
]
TOOL_CALL_CASES: dict[str, dict[str, Any]] = {
    "auto, two calls": {"tools": TOOLS},
    "required after a tool result": {"tools": TOOLS, "tool_choice": "required", "messages": AFTER_A_TOOL_RESULT},
    "named after a tool result": {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "messages": AFTER_A_TOOL_RESULT,
    },
    "reasoning then a call": {"tools": TOOLS, "tool_choice": "required", "reasoning_effort": "minimal"},
}


def summary(body: ChatCompletion) -> list[tuple[str, str, str]]:
    """Each function call of a completion's first choice: its id, name and arguments."""
    calls = body.choices[0].message.tool_calls or []
    return [(call.id, call.function.name, call.function.arguments) for call in calls if call.type == "function"]


@pytest.mark.parametrize("fields", TOOL_CALL_CASES.values(), ids=TOOL_CALL_CASES.keys())
def test_tool_call_chunks_parse_as_the_openai_sdk_reads_them(fields: dict[str, Any]) -> None:
    meta = new_completion("demo-model")
    reply = plan_reply(chat(**fields), 4)
    [choice] = reply.choices
    payloads = [*choice_chunks(meta, choice, include_usage=False), finish_chunk(meta, choice, include_usage=False)]

    parsed = [ChatCompletionChunk.model_validate(payload) for payload in payloads]
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in parsed:
        state.handle_chunk(chunk)

    deltas = [chunk.choices[0].delta for chunk in parsed]
    assert deltas[0].role == "assistant"
    calls = [(delta.tool_calls or [])[0] for delta in deltas if delta.tool_calls]
    for position, call in enumerate(choice.tool_calls):
        [start, *pieces] = [delta for delta in calls if delta.index == position]
        assert (start.id, start.type) == (call.id, "function")
        assert start.function is not None
        assert (start.function.name, start.function.arguments) == (call.name, "")
        assert all(piece.id is None and piece.type is None for piece in pieces)
        assert all(piece.function is not None and piece.function.name is None for piece in pieces)
        assert "".join(piece.function.arguments or "" for piece in pieces if piece.function) == call.arguments
    assert [chunk.choices[0].finish_reason for chunk in parsed] == [None] * (len(parsed) - 1) + ["tool_calls"]
    streamed = state.get_final_completion()
    whole = ChatCompletion.model_validate(completion(meta, reply))
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"
    assert summary(streamed) == summary(whole) == [(call.id, call.name, call.arguments) for call in choice.tool_calls]
    assert streamed.choices[0].message.content is None
