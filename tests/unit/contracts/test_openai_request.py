from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from libs.contracts.openai import ChatCompletionRequest, hoster_body, validation_failure

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def failure(payload: dict[str, Any]) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(payload)
    message, param, _ = validation_failure(payload, info.value.errors(include_url=False))
    return message, param


def test_the_hoster_gets_the_clients_own_json_minus_routing_fields() -> None:
    payload = BASE | {
        "top_k": 5,
        "repetition_penalty": 1.1,
        "tier": "cheapest",
        "privacy_mode": True,
        "seed": 3,
        "temperature": 1,
        "unknown_vendor_field": {"x": [1, 2]},
    }
    request = ChatCompletionRequest.model_validate(payload)
    body = hoster_body(payload)
    assert body == {k: v for k, v in payload.items() if k not in ("tier", "privacy_mode")}
    assert body["temperature"] == 1
    assert type(body["temperature"]) is int  # exactly as sent, not re-serialized
    assert request.routing().tier == "cheapest"
    assert request.routing().privacy_mode is True


def test_every_message_role_and_content_part_is_accepted() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "really"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "content": "done", "reasoning_content": "thought"},
    ]
    ChatCompletionRequest.model_validate(BASE | {"messages": messages})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("top_p", -0.1),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.01),
        ("max_tokens", 0),
        ("max_completion_tokens", 0),
        ("n", 0),
        ("n", 129),
        ("top_logprobs", 21),
        ("logit_bias", {"50256": -101}),
        ("reasoning_effort", "extreme"),
        ("repetition_penalty", 0),
        ("seed", 2**64),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("tier", "cheapest-please"),
        ("stream", "yes"),
    ],
)
def test_out_of_range_parameters_are_a_400_naming_the_parameter(field: str, value: Any) -> None:
    payload = BASE | {field: value}
    if field == "top_logprobs":
        payload["logprobs"] = True
    message, param = failure(payload)
    assert param is not None
    assert param.startswith(field)
    assert field in message


def test_nested_errors_are_named_the_way_openai_names_them() -> None:
    assert failure(BASE | {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "x"}]})[1] == (
        "messages[1]"
    )
    assert failure(BASE | {"messages": [{"role": "tool", "content": "x"}]})[1] == "messages[0]"
    tools = [{"type": "function", "function": {"name": "bad name!", "parameters": {}}}]
    assert failure(BASE | {"tools": tools})[1] == "tools[0].function.name"
    message, param = failure({"messages": BASE["messages"]})
    assert param == "model"
    assert "Missing required parameter" in message


def test_cross_field_rules_name_the_parameter() -> None:
    assert failure(BASE | {"stream_options": {"include_usage": True}})[1] == "stream_options"
    assert failure(BASE | {"top_logprobs": 2})[1] == "top_logprobs"
    assert failure(BASE | {"tool_choice": "required"})[1] == "tool_choice"


def test_hoster_lists_must_be_uuids() -> None:
    _message, param = failure(BASE | {"allow_hosters": ["not-a-uuid"]})
    assert param is not None
    assert param.startswith("allow_hosters")
    ok = ChatCompletionRequest.model_validate(BASE | {"deny_hosters": ["5F0C6F3E-2D7A-4C55-9A51-0D3C2B6F7A01"]})
    assert ok.routing().deny_hosters == ["5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"]


def test_response_formats_and_tool_choices() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}
    ChatCompletionRequest.model_validate(BASE | {"response_format": schema})
    ChatCompletionRequest.model_validate(BASE | {"response_format": {"type": "json_object"}})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    ChatCompletionRequest.model_validate(BASE | {"tools": tools, "tool_choice": named, "parallel_tool_calls": False})
    assert failure(BASE | {"response_format": {"type": "yaml"}})[1] == "response_format"
