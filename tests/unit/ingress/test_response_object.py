"""The Response object of a whole chat completion (``services.ingress.response_object``): valid against OpenAI's
published ``Response`` schema, read by OpenAI's SDK, and saying what the chat answer said."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from libs.contracts.responses import ResponsesRequest
from services.ingress.response_object import response_of, usage_of
from services.ingress.responses import chat_request_of
from tests.openai_schema import openai_validator

WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 12,
    "total_tokens": 32,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 5},
    "cost": 0.000123,
    "cost_details": {"upstream_inference_cost": 0.0001},
}


def request(**body: Any) -> ResponsesRequest:
    return chat_request_of({"model": "m", "input": "hi"} | body, previous_items=[]).request


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant"} | message, "finish_reason": finish}
    doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m-served", "choices": [choice]}
    return doc | {"usage": USAGE} | extra


def answered(message: dict[str, Any], finish: str = "stop", req: ResponsesRequest | None = None) -> dict[str, Any]:
    """The Response for ``message``, checked against the schema and read by the SDK."""
    body = response_of(completion(message, finish), req or request(), "resp_1", 1_700_000_000, 1_700_000_003)
    openai_validator("Response").validate(body)
    Response.model_validate(body)
    return body


def test_a_text_answer_is_one_message_with_output_text() -> None:
    body = answered({"content": "Hello!"})

    assert body["id"] == "resp_1"
    assert body["object"] == "response"
    assert (body["created_at"], body["completed_at"]) == (1_700_000_000, 1_700_000_003)
    assert body["status"] == "completed"
    assert (body["error"], body["incomplete_details"]) == (None, None)
    assert body["model"] == "m-served"
    [message] = body["output"]
    assert message["id"].startswith("msg_")
    assert {k: v for k, v in message.items() if k != "id"} == {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}],
    }
    assert "output_text" not in body  # the SDKs compute it
    assert Response.model_validate(body).output_text == "Hello!"


def test_usage_is_in_the_responses_shape_with_the_gateways_cost() -> None:
    assert answered({"content": "x"})["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 32,
        "cost": 0.000123,
        "cost_details": {"upstream_inference_cost": 0.0001},
    }
    estimated = usage_of({"prompt_tokens": 3, "completion_tokens": 4, "estimated": True})
    assert estimated["estimated"] is True
    assert estimated["total_tokens"] == 7


def test_a_hosters_nonsense_usage_counts_for_nothing_and_details_stay_within_their_counts() -> None:
    usage = usage_of(
        {
            "prompt_tokens": -4,
            "completion_tokens": "12",
            "prompt_tokens_details": {"cached_tokens": 99},
            "completion_tokens_details": "many",
        }
    )

    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (0, 0, 0)
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0


def test_no_usage_reported_leaves_it_out() -> None:
    body = response_of(completion({"content": "x"}) | {"usage": None}, request(), "resp_1", 1)

    assert "usage" not in body
    assert body["completed_at"] == 1
    openai_validator("Response").validate(body)


def test_reasoning_then_text_then_calls_in_openais_order() -> None:
    body = answered(
        {
            "content": "Checking.",
            "reasoning_content": "The user wants weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        "tool_calls",
        request(tools=[WEATHER_TOOL]),
    )

    reasoning, message, first, second = body["output"]
    assert reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "The user wants weather."}]
    assert message["content"][0]["text"] == "Checking."
    assert first["id"].startswith("fc_")
    assert {k: first[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    assert (second["call_id"], second["arguments"]) == ("call_2", '{"city":"Rome"}')
    assert body["status"] == "completed"


def test_reasoning_under_openrouters_name_is_read_too() -> None:
    body = answered({"content": "4", "reasoning": "2+2"})

    assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "2+2"}]


def test_a_call_without_an_id_gets_one() -> None:
    body = answered({"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls")

    assert body["output"][0]["call_id"].startswith("call_")


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_a_cut_answer_is_incomplete_and_so_is_its_last_item(finish: str, reason: str) -> None:
    body = answered({"content": "Once upon a", "reasoning_content": "a story"}, finish)

    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": reason}
    assert [item["status"] for item in body["output"]] == ["completed", "incomplete"]


def test_an_answer_cut_while_reasoning_has_only_the_reasoning() -> None:
    body = answered({"content": "", "reasoning_content": "Let me think ab"}, "length")

    assert [item["type"] for item in body["output"]] == ["reasoning"]
    assert body["output"][0]["status"] == "incomplete"
    assert Response.model_validate(body).output_text == ""


def test_a_refusal_is_a_refusal_part() -> None:
    body = answered({"content": None, "refusal": "I can't help with that."})

    assert body["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]


def test_logprobs_asked_for_are_on_the_text() -> None:
    logprobs = {
        "content": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1}]},
            {"token": "!", "logprob": float("nan")},  # a hoster's nonsense: left out
        ]
    }
    doc = completion({"content": "Hi!"})
    doc["choices"][0]["logprobs"] = logprobs
    asked = request(include=["message.output_text.logprobs"], top_logprobs=1)
    body = response_of(doc, asked, "resp_1", 1)

    openai_validator("Response").validate(body)
    assert body["output"][0]["content"][0]["logprobs"] == [
        {
            "token": "Hi",
            "logprob": -0.1,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}],
        }
    ]
    assert response_of(doc, request(), "resp_1", 1)["output"][0]["content"][0]["logprobs"] == []


def test_the_request_is_echoed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = request(
        instructions="Be brief.",
        tools=[WEATHER_TOOL, {"type": "function", "name": "noop", "description": "nothing"}],
        tool_choice={"type": "function", "name": "noop"},
        parallel_tool_calls=False,
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=100,
        text={"format": {"type": "json_schema", "name": "out", "schema": schema}, "verbosity": "high"},
        reasoning={"effort": "high", "summary": "detailed"},
        metadata={"k": "v"},
        previous_response_id="resp_0",
        store=False,
        user="u",
        safety_identifier="s",
    )
    body = answered({"content": "x"}, req=req)

    assert {key: body[key] for key in body if key not in ("id", "output", "usage", "created_at", "completed_at")} == {
        "object": "response",
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "m-served",
        "background": False,
        "instructions": "Be brief.",
        "max_output_tokens": 100,
        "max_tool_calls": None,
        "metadata": {"k": "v"},
        "parallel_tool_calls": False,
        "previous_response_id": "resp_0",
        "reasoning": {"effort": "high", "summary": "detailed"},
        "service_tier": "default",
        "store": False,
        "temperature": 0.2,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}, "verbosity": "high"},
        "tool_choice": {"type": "function", "name": "noop"},
        "tools": [
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True},
            {"type": "function", "name": "noop", "description": "nothing", "parameters": None, "strict": None},
        ],
        "top_logprobs": None,
        "top_p": 0.9,
        "truncation": "disabled",
        "user": "u",
        "safety_identifier": "s",
    }


def test_the_defaults_are_echoed_when_the_request_set_none() -> None:
    body = answered({"content": "x"})

    assert body["tool_choice"] == "auto"
    assert body["tools"] == []
    assert body["parallel_tool_calls"] is True
    assert body["store"] is True
    assert body["metadata"] == {}
    assert body["text"] == {"format": {"type": "text"}}
    assert body["reasoning"] == {"effort": None, "summary": None}
    assert (body["temperature"], body["top_p"], body["instructions"]) == (None, None, None)
    assert "user" not in body  # the schema has no null for it


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"choices": "nope"},
        {"choices": [None]},
        {"choices": [{"message": "text"}]},
        {"choices": [{"message": {"content": 5, "tool_calls": [None, {"function": "f"}], "refusal": 3}}]},
        {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": 1}]}}], "model": 7},
    ],
)
def test_a_malformed_answer_never_breaks_the_response(doc: dict[str, Any]) -> None:
    body = response_of(doc, request(), "resp_1", 1)

    openai_validator("Response").validate(body)
    assert body["model"] == "m"
