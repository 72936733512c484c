"""A Responses request as the chat completion that serves it (``services.ingress.responses``): the chat body,
the messages its items become, and the input items as they are stored."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest

from libs.contracts.openai import ValidationFailure, hoster_body
from services.ingress.response_object import response_of
from services.ingress.responses import ChatTranslation, InvalidRequest, chat_messages, chat_request_of
from tests.openai_schema import openai_validator

HOSTER = "5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather now", "parameters": WEATHER}
TIME_TOOL = {"type": "function", "name": "get_time", "parameters": None, "strict": False}


def translated(**body: Any) -> ChatTranslation:
    return chat_request_of({"model": "m", "input": "hi"} | body)


def refused(previous_items: list[dict[str, Any]] | None = None, **body: Any) -> ValidationFailure:
    with pytest.raises(InvalidRequest) as info:
        chat_request_of({"model": "m", "input": "hi"} | body, previous_items)
    return info.value.failure


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key != "id"} for item in items]


def test_a_string_input_is_one_user_message_and_instructions_lead_as_system() -> None:
    translation = translated(instructions="Be brief.")

    assert translation.chat_body == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    }
    assert without_ids(translation.input_items) == [
        {"type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "hi"}]}
    ]
    assert translation.input_items[0]["id"].startswith("msg_")
    assert translation.chat.messages[1].role == "user"  # the chat body, validated as the chat path does


def test_parameters_map_onto_their_chat_names() -> None:
    translation = translated(
        max_output_tokens=256,
        temperature=0,
        top_p=0.5,
        user="u-1",
        safety_identifier="hashed",
        prompt_cache_key="conversation-7",
        reasoning={"effort": "low", "summary": "auto"},
        text={"format": {"type": "json_object"}, "verbosity": "low"},
        top_k=40,
        seed=7,
        stop=["\n\n"],
        metadata={"trace": "abc"},
        store=False,
        include=["reasoning.encrypted_content"],
        service_tier="auto",
        max_tool_calls=3,
        truncation="disabled",
        background=False,
        conversation=None,
    )

    body = translation.chat_body
    del body["messages"]
    assert body == {
        "model": "m",
        "max_completion_tokens": 256,
        "temperature": 0,
        "top_p": 0.5,
        "user": "u-1",
        "safety_identifier": "hashed",
        "prompt_cache_key": "conversation-7",
        "reasoning_effort": "low",
        "response_format": {"type": "json_object"},
        "verbosity": "low",
        "top_k": 40,
        "seed": 7,
        "stop": ["\n\n"],
    }
    assert type(body["temperature"]) is int  # as the client wrote it, as on the chat path


def test_a_json_schema_format_becomes_chats_nested_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    translation = translated(
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    )

    assert translation.chat_body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert "response_format" not in translated(text={"format": {"type": "text"}}).chat_body


def test_a_stream_asks_for_usage_in_the_last_chunk() -> None:
    translation = translated(stream=True, stream_options={"include_obfuscation": False})

    assert translation.chat_body["stream"] is True
    assert translation.chat_body["stream_options"] == {"include_usage": True}
    assert "stream" not in translated().chat_body


def test_flat_function_tools_become_chats_nested_ones_with_the_choice_and_parallelism() -> None:
    translation = translated(
        tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "function", "name": "get_time"}, parallel_tool_calls=False
    )

    assert translation.chat_body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
        },
        {"type": "function", "function": {"name": "get_time", "strict": False}},
    ]
    assert translation.chat_body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert translation.chat_body["parallel_tool_calls"] is False
    for choice in ("none", "auto", "required"):
        assert translated(tools=[WEATHER_TOOL], tool_choice=choice).chat_body["tool_choice"] == choice


def test_allowed_tools_sends_only_the_allowed_functions_with_its_mode() -> None:
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
    translation = translated(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice)

    assert [tool["function"]["name"] for tool in translation.chat_body["tools"]] == ["get_time"]
    assert translation.chat_body["tool_choice"] == "required"


def test_a_choice_without_tools_is_not_sent_for_chat_to_refuse() -> None:
    body = translated(tool_choice="auto", parallel_tool_calls=True, tools=[]).chat_body

    assert {"tools", "tool_choice", "parallel_tool_calls"}.isdisjoint(body)


def test_logprobs_are_asked_for_through_include() -> None:
    body = translated(include=["message.output_text.logprobs"], top_logprobs=3).chat_body

    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert "logprobs" not in translated(include=["reasoning.encrypted_content"]).chat_body


def test_routing_fields_of_both_dialects_reach_the_chat_path_as_sent() -> None:
    routing = {
        "privacy_mode": True,
        "trusted_only": True,
        "max_latency_ms": 2000,
        "fallback_models": ["b"],
        "allow_hosters": [HOSTER.upper()],
        "deny_hosters": [],
        "provider": {"sort": "price", "max_price": {"completion": "0.5"}},
        "models": ["c"],
    }
    translation = translated(**routing)

    assert {key: translation.chat_body[key] for key in routing} == routing
    prefs = translation.chat.routing()
    assert prefs == translation.request.routing()
    assert prefs.tier == "cheapest"
    assert prefs.fallback_models == ["c", "b"]
    assert prefs.allow_hosters == [HOSTER]
    # What the hoster receives: no routing field, no Responses-only parameter.
    assert set(hoster_body(translation.chat_body)) == {"model", "messages"}


def test_a_model_suffix_routes_as_on_the_chat_path() -> None:
    translation = translated(model="m:nitro")

    assert translation.chat.routed_model == "m"
    assert translation.chat.routing().tier == "throughput"


def test_every_kind_of_item_becomes_chat_messages() -> None:
    translation = translated(
        instructions="Use tools.",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather there?"},
                    {"type": "input_image", "image_url": "https://example.com/paris.png", "detail": "low"},
                    {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "Paris"}],
            },
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "18C at noon.", "annotations": [], "logprobs": []}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        tools=[WEATHER_TOOL, TIME_TOOL],
    )

    assert translation.chat_body["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "developer", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather there?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/paris.png", "detail": "low"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "reasoning_content": "Paris",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "assistant", "content": "18C at noon."},
        {"role": "user", "content": "Thanks"},
    ]


def test_stored_input_items_have_ids_and_the_apis_stored_shape() -> None:
    translation = translated(
        input=[
            {"role": "system", "content": [{"type": "input_text", "text": "s"}]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
            {"role": "assistant", "content": "a", "phase": "final_answer"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "r"}], "encrypted_content": "opaque"},
            {"type": "function_call", "id": "fc_given", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "out"},
        ]
    )
    items = translation.input_items

    assert [item["id"][: item["id"].index("_") + 1] for item in items] == ["msg_", "msg_", "msg_", "rs_", "fc_", "fco_"]
    assert items[4]["id"] == "fc_given"  # an id the client gave is kept
    assert items[1]["content"] == [{"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "auto"}]
    assert items[2]["content"] == [{"type": "output_text", "text": "a", "annotations": [], "logprobs": []}]
    assert items[2]["phase"] == "final_answer"
    assert items[3]["encrypted_content"] == "opaque"
    assert items[5]["status"] == "completed"
    validator = openai_validator("ItemResource")
    for item in items:
        validator.validate(item)


def test_previous_items_come_after_the_instructions_and_before_the_new_input() -> None:
    first = translated(input="What is 2+2?")
    answer = [
        {"id": "rs_a", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "easy"}]},
        {
            "id": "msg_a",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "4", "annotations": [], "logprobs": []}],
        },
    ]
    follow_up = chat_request_of(
        {"model": "m", "input": "And 3+3?", "instructions": "Be terse.", "previous_response_id": "resp_1"},
        [*first.input_items, *answer],
    )

    assert follow_up.chat_body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "easy"},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert len(follow_up.input_items) == 1  # only the new input is stored anew


def test_a_chain_without_new_input_is_served_from_its_items() -> None:
    earlier = translated(input="hello").input_items
    translation = chat_request_of({"model": "m", "previous_response_id": "resp_1"}, earlier)

    assert translation.chat_body["messages"] == [{"role": "user", "content": "hello"}]


def test_previous_response_id_without_its_items_is_the_callers_bug() -> None:
    with pytest.raises(ValueError, match="previous_response_id"):
        chat_request_of({"model": "m", "input": "hi", "previous_response_id": "resp_1"})


def test_reasoning_of_no_answer_and_encrypted_reasoning_are_dropped() -> None:
    messages = chat_messages(
        [
            {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "unanswered"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "next"}]},
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "one"}, {"type": "summary_text", "text": "two"}],
            },
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ]
    )

    assert messages == [
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "next"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "one\n\ntwo",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]


def test_a_refusal_passed_back_is_chats_refusal() -> None:
    translation = translated(input=[{"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}])

    assert translation.chat_body["messages"] == [{"role": "assistant", "content": None, "refusal": "No."}]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ({"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}, "input[0].content[0]"),
        ({"role": "developer", "content": [{"type": "input_file", "file_data": "AA"}]}, "input[0].content[0]"),
        ({"role": "user", "content": [{"type": "output_text", "text": "x"}]}, "input[0].content[0]"),
        ({"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}, "input[0].content[0]"),
        ({"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}, "input[0].content[0]"),
        ({"role": "user", "content": [{"type": "input_image"}]}, "input[0].content[0].image_url"),
        ({"role": "user", "content": [{"type": "input_file", "filename": "a.pdf"}]}, "input[0].content[0].file_data"),
        (
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "u"}]},
            "input[0].output[0]",
        ),
    ],
)
def test_content_a_chat_message_cannot_carry_is_refused_by_name(content: dict[str, Any], param: str) -> None:
    message, got, _ = refused(input=[content])

    assert got == param
    assert message.startswith(f"Invalid value for '{param}'")


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file-1"}, "input[1].content[0].file_id"),
        ({"type": "input_file", "file_id": "file-1"}, "input[1].content[0].file_id"),
        ({"type": "input_file", "file_url": "https://example.com/a.pdf"}, "input[1].content[0].file_url"),
    ],
)
def test_files_by_reference_are_refused_there_is_no_files_api(part: dict[str, Any], param: str) -> None:
    _, got, code = refused(input=[{"role": "user", "content": "a"}, {"role": "user", "content": [part]}])

    assert (got, code) == (param, "unsupported_parameter")


@pytest.mark.parametrize("body", [{"input": []}, {"input": None}])
def test_no_input_is_a_missing_input(body: dict[str, Any]) -> None:
    assert refused(**body)[:2] == ("Missing required parameter: 'input'.", "input")


def test_an_empty_chain_and_no_input_is_a_missing_input() -> None:
    message, param, _ = refused(previous_items=[], input=None, previous_response_id="resp_1")

    assert (message, param) == ("Missing required parameter: 'input'.", "input")


def sdk_body(**params: Any) -> dict[str, Any]:
    """The JSON body OpenAI's SDK sends for ``client.responses.create(**params)``."""
    sent: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.content)
        return httpx2.Response(400, json={"error": {"message": "stop", "type": "x", "param": None, "code": None}})

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as http:
        client = openai.OpenAI(api_key="x", base_url="http://gateway/v1", http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError):
            client.responses.create(**params)
    body: dict[str, Any] = orjson.loads(sent[0])
    return body


def test_what_the_openai_sdk_sends_is_accepted() -> None:
    body = sdk_body(
        model="m",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        ],
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}],
        tool_choice="auto",
        text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}},
        reasoning={"effort": "medium", "summary": "auto"},
        max_output_tokens=500,
        metadata={"a": "b"},
        store=True,
        stream=False,
        extra_body={"tier": "cheapest"},
    )
    translation = chat_request_of(body)

    assert [m["role"] for m in translation.chat_body["messages"]] == ["system", "user", "assistant", "tool"]
    assert translation.chat.routing().tier == "cheapest"
    assert translation.chat_body["reasoning_effort"] == "medium"


def test_an_answers_output_passed_back_is_the_same_assistant_turn() -> None:
    first = translated(input="Weather in Paris?", tools=[WEATHER_TOOL])
    answer = {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "reasoning_content": "Need the tool.",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    output = response_of(answer, first.request, "resp_1", 1)["output"]
    tool_result = {"type": "function_call_output", "call_id": "call_1", "output": "18C"}
    # Chained by previous_response_id, or with the output passed back as input: the same conversation.
    chained = chat_request_of(
        {"model": "m", "input": [tool_result], "previous_response_id": "resp_1", "tools": [WEATHER_TOOL]},
        [*first.input_items, *output],
    )
    passed_back = translated(input=[*first.input_items, *output, tool_result], tools=[WEATHER_TOOL])

    expected = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    assert chained.chat_body["messages"] == expected
    assert passed_back.chat_body["messages"] == expected
