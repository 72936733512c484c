"""The Responses API request as the ingress validates it (``libs.contracts.responses``): what it accepts, and
what it refuses with a 400 naming the parameter, unsupported features by name rather than dropped."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from libs.contracts.openai import ValidationFailure, validation_failure
from libs.contracts.responses import ResponsesRequest

BASE: dict[str, Any] = {"model": "m", "input": "hi"}
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
# The OpenAPI document's body schema: a body the model accepts is valid against it.
SCHEMA = jsonschema.Draft202012Validator(ResponsesRequest.model_json_schema())


def refused(**body: Any) -> ValidationFailure:
    payload = BASE | body
    with pytest.raises(ValidationError) as info:
        ResponsesRequest.model_validate(payload)
    return validation_failure(payload, info.value.errors(include_url=False))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": [{"role": "user", "content": "hi"}]},
        {
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None, "status": "completed"},
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "phase": "final_answer",
                    "content": [{"type": "output_text", "text": "a", "annotations": [], "logprobs": []}],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "c",
                    "name": "f",
                    "arguments": "{}",
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "c", "output": "42"},
            ]
        },
        {
            "tools": [TOOL],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
        },
        {"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}}},
        {"reasoning": {"effort": "minimal", "summary": "concise"}, "max_output_tokens": 16, "metadata": {"a": "b"}},
        {"include": ["message.output_text.logprobs"], "top_logprobs": 20, "truncation": "disabled", "store": False},
        {"stream": True, "stream_options": {"include_obfuscation": True}, "service_tier": "default"},
        {"background": False, "conversation": None, "prompt": None, "previous_response_id": "resp_1"},
        {"tier": "fastest", "provider": {"only": ["a"]}, "models": ["b"], "top_k": 5, "seed": 1, "stop": "x"},
    ],
)
def test_what_openai_and_our_routing_allow_is_accepted_and_valid_against_the_schema(body: dict[str, Any]) -> None:
    ResponsesRequest.model_validate(BASE | body)
    SCHEMA.validate(BASE | body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOL, {"type": "web_search_preview"}]}, "tools[1].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
        ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
        ({"tools": [{"type": "custom", "name": "grammar"}]}, "tools[0].type"),
        ({"tools": [TOOL | {"defer_loading": True}]}, "tools[0].defer_loading"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": "a"}, {"type": "web_search_call", "id": "w"}]}, "input[1].type"),
        ({"input": [{"type": "custom_tool_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": "a", "prompt_cache_breakpoint": {}}]},
            "input[0].prompt_cache_breakpoint",
        ),
        ({"truncation": "auto"}, "truncation"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"moderation": {"model": "omni"}}, "moderation"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
        ({"prompt_cache_options": {"ttl": "12h"}}, "prompt_cache_options"),
        ({"frobnicate": True}, "frobnicate"),
        ({"provider": {"zdr": True}}, "provider.zdr"),
    ],
)
def test_what_the_gateway_cannot_honour_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    message, got, code = refused(**body)

    assert (got, code) == (param, "unsupported_parameter")
    assert param.split(".")[0].split("[")[0] in message
    assert not SCHEMA.is_valid(BASE | body)  # the OpenAPI document says so too


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "bogus"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "detail": "original"}]}]},
            "input[0].content[0].detail",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "call_id": "", "output": "x"}]}, "input[0].call_id"),
        ({"input": 5}, "input"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        (
            {
                "tools": [TOOL],
                "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "x"}]},
            },
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"max_output_tokens": 15}, "max_output_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": "high"}, "top_p"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"reasoning": {"effort": "low", "budget": 5}}, "reasoning.budget"),
        ({"text": {"format": {"type": "json_schema", "name": "a", "schema": "not an object"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"metadata": {"key": 1}}, "metadata.key"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"include": ["everything"]}, "include[0]"),
        ({"stream": "yes"}, "stream"),
        ({"model": ""}, "model"),
        ({"tier": "cheapest", "provider": {"sort": "price"}}, "provider.sort"),
    ],
)
def test_a_bad_value_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    assert refused(**body).param == param


def test_logprobs_are_asked_for_through_include() -> None:
    assert ResponsesRequest.model_validate(BASE | {"include": ["message.output_text.logprobs"]}).logprobs
    assert not ResponsesRequest.model_validate(BASE | {"include": ["reasoning.encrypted_content"]}).logprobs
