"""The simulator's pure logic: deterministic replies, tool calls, token counts, fault selection and request checks."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from services.simulator.chat_request import ChatCompletionRequest, SimulatorOverride, request_problem
from services.simulator.service import (
    WORDS,
    Behaviour,
    cut_at_stop,
    estimate_prompt_tokens,
    functions_to_call,
    message_texts,
    plan_reply,
    reply_tokens,
    resolve_behaviour,
)

DEFAULTS = Behaviour(
    reply_tokens=16, ttft_ms=0, tokens_per_second=0, fault="error", fault_status=500, fault_after_tokens=0
)


def chat(content: Any = "Tell me about the network.", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "demo-model", "messages": [{"role": "user", "content": content}], **fields}
    )


def test_the_same_prompt_gets_the_same_reply() -> None:
    assert reply_tokens(["hello"], 32) == reply_tokens(["hello"], 32)


def test_different_prompts_get_different_replies() -> None:
    assert reply_tokens(["hello"], 32) != reply_tokens(["goodbye"], 32)


def test_tokens_are_words_with_a_leading_space_except_the_first() -> None:
    tokens = reply_tokens(["hello"], 20)

    assert len(tokens) == 20
    assert not tokens[0].startswith(" ")
    assert all(token.startswith(" ") for token in tokens[1:])
    assert {token.strip() for token in tokens} <= set(WORDS)


def test_a_shorter_reply_is_a_prefix_of_a_longer_one() -> None:
    assert reply_tokens(["hello"], 5) == reply_tokens(["hello"], 50)[:5]


def test_an_empty_reply_has_no_tokens() -> None:
    assert reply_tokens(["hello"], 0) == []


def test_message_text_comes_from_strings_and_text_parts_only() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]

    assert message_texts(messages) == ["be brief", "look"]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [(["a" * 400], 100), (["abcd", "efgh"], 2), (["abc"], 1), ([], 1), ([""], 1)],
)
def test_prompt_tokens_are_a_quarter_of_the_characters_and_at_least_one(texts: list[str], expected: int) -> None:
    assert estimate_prompt_tokens(texts) == expected


def test_reply_without_a_cap_has_the_configured_length_and_stops() -> None:
    reply = plan_reply(chat(), 16)

    [choice] = reply.choices
    assert len(choice.tokens) == 16
    assert choice.tokens == reply_tokens(["Tell me about the network."], 16)
    assert choice.finish_reason == "stop"
    assert reply.prompt_tokens == len("Tell me about the network.") // 4


def test_max_tokens_below_the_reply_length_cuts_it_with_finish_reason_length() -> None:
    [choice] = plan_reply(chat(max_tokens=4), 16).choices

    assert len(choice.tokens) == 4
    assert choice.finish_reason == "length"


def test_max_tokens_above_the_reply_length_does_not_cut_it() -> None:
    [choice] = plan_reply(chat(max_tokens=100), 16).choices

    assert len(choice.tokens) == 16
    assert choice.finish_reason == "stop"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    [choice] = plan_reply(chat(max_tokens=10, max_completion_tokens=3), 16).choices

    assert len(choice.tokens) == 3
    assert choice.finish_reason == "length"


def test_usage_counts_prompt_and_completion_tokens_with_openai_details() -> None:
    reply = plan_reply(chat("x" * 40, max_tokens=5), 16)

    assert reply.usage() == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_configured_fault_happens_when_the_roll_is_below_the_rate() -> None:
    assert resolve_behaviour(DEFAULTS, 0.25, None, 0.1).fault == "error"
    assert resolve_behaviour(DEFAULTS, 0.25, None, 0.3).fault == "none"


def test_fault_rate_zero_never_faults_and_one_always_does() -> None:
    assert resolve_behaviour(DEFAULTS, 0.0, None, 0.0).fault == "none"
    assert resolve_behaviour(DEFAULTS, 1.0, None, 0.999).fault == "error"


def test_a_fault_named_per_request_always_happens() -> None:
    override = SimulatorOverride(fault="disconnect", fault_after_tokens=3)

    behaviour = resolve_behaviour(DEFAULTS, 0.0, override, 0.99)

    assert behaviour.fault == "disconnect"
    assert behaviour.fault_after_tokens == 3


def test_per_request_none_fault_suppresses_the_configured_one() -> None:
    assert resolve_behaviour(DEFAULTS, 1.0, SimulatorOverride(fault="none"), 0.0).fault == "none"


def test_per_request_timing_replaces_only_what_it_sets() -> None:
    override = SimulatorOverride(reply_tokens=3, tokens_per_second=50)

    behaviour = resolve_behaviour(DEFAULTS, 0.0, override, 0.5)

    assert (behaviour.reply_tokens, behaviour.tokens_per_second, behaviour.ttft_ms) == (3, 50, 0)
    assert behaviour.fault_status == 500


def test_generation_time_paces_tokens_after_the_first() -> None:
    behaviour = Behaviour(
        reply_tokens=5, ttft_ms=200, tokens_per_second=4, fault="none", fault_status=500, fault_after_tokens=0
    )

    assert behaviour.ttft_s == pytest.approx(0.2)
    assert behaviour.generation_s(5) == pytest.approx(1.0)
    assert behaviour.generation_s(0) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"stream": "yes"},
        {"max_tokens": 0},
        {"max_tokens": "5"},
        {"simulator": {"fault": "explode"}},
        {"simulator": {"unknown": 1}},
        {"simulator": {"fault_status": 200}},
    ],
)
def test_invalid_requests_are_rejected(fields: dict[str, Any]) -> None:
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], **fields}

    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(body)


def test_unknown_openai_fields_are_accepted() -> None:
    request = chat(
        temperature=0.2,
        top_p=0.9,
        seed=7,
        user="someone",
        logit_bias={"50256": -100},
        presence_penalty=0.5,
        frequency_penalty=0.5,
        top_k=40,
        repetition_penalty=1.1,
        metadata={"team": "a"},
        service_tier="auto",
        n=1,
        tools=[],
    )

    assert request.model == "demo-model"
    assert request_problem(request) is None


def test_integer_timings_are_accepted_as_floats() -> None:
    assert chat(simulator={"ttft_ms": 5}).simulator == SimulatorOverride(ttft_ms=5.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 0},
        {"n": 129},
        {"top_logprobs": 21},
        {"logprobs": "yes"},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": 5},
        {"reasoning_effort": "extreme"},
        {"response_format": {"type": "xml"}},
        {"tools": [{"type": "function", "function": {"description": "no name"}}]},
        {"tool_choice": "sometimes"},
        {"simulator": {"reasoning_tokens": -1}},
    ],
)
def test_invalid_values_of_the_features_the_simulator_uses_are_rejected(fields: dict[str, Any]) -> None:
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], **fields}

    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(body)


def test_nullable_openai_parameters_accept_null() -> None:
    request = chat(n=None, stop=None, logprobs=None, top_logprobs=None, reasoning_effort=None, tool_choice=None)

    assert len(plan_reply(request, 4).choices) == 1


WEATHER: dict[str, Any] = {
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
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
TOOLS = [WEATHER, CLOCK]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_impossible_requests_name_the_param(fields: dict[str, Any], problem: str) -> None:
    invalid = request_problem(chat(**fields))

    assert invalid is not None
    assert invalid.param == problem
    assert problem.split(".")[0] in invalid.message


def test_n_choices_are_indexed_each_with_its_own_words_and_usage_sums_them() -> None:
    reply = plan_reply(chat(n=3), 5)

    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert reply.choices[0].tokens == plan_reply(chat(), 5).choices[0].tokens
    assert len({choice.content for choice in reply.choices}) == 3
    assert reply.choices == plan_reply(chat(n=3), 5).choices
    assert reply.usage()["completion_tokens"] == 15


def called(fields: dict[str, Any], content: str = "weather in Paris?") -> list[str]:
    return [function.name for function in functions_to_call(chat(content, **fields))]


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"tools": TOOLS}, ["get_weather", "get_time"]),
        ({"tools": TOOLS, "tool_choice": "auto"}, ["get_weather", "get_time"]),
        ({"tools": TOOLS, "parallel_tool_calls": False}, ["get_weather"]),
        ({"tools": TOOLS, "tool_choice": "required"}, ["get_weather"]),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tools": TOOLS, "tool_choice": "none"}, []),
        ({"tools": [CLOCK]}, ["get_time"]),
        ({"tools": []}, []),
        (
            {
                "tools": TOOLS,
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "required",
                        "tools": [{"type": "function", "function": {"name": "get_time"}}],
                    },
                },
            },
            ["get_time"],
        ),
        (
            {
                "tools": TOOLS,
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [
                            {"type": "custom", "custom": {"name": "grep"}},
                            {"type": "function", "function": "get_weather"},
                            {"type": "function", "function": {"name": "get_weather"}},
                            {"type": "function", "function": {"name": "get_time"}},
                        ],
                    },
                },
            },
            ["get_weather", "get_time"],
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "grep"}}, CLOCK]}, ["get_time"]),
        (
            {
                "tools": [*TOOLS, {"type": "custom", "custom": {"name": "grep"}}],
                "tool_choice": {"type": "custom", "custom": {"name": "grep"}},
            },
            [],
        ),
    ],
)
def test_tool_choice_decides_which_functions_are_called(fields: dict[str, Any], names: list[str]) -> None:
    assert called(fields) == names


# A conversation whose last message is a tool result: here the error an instructor retry sends back.
AFTER_A_TOOL_RESULT: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": 1}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Validation error: unit is required. Call it again."},
]


def after_a_tool_result(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "demo-model", "messages": AFTER_A_TOOL_RESULT, "tools": TOOLS, **fields}
    )


def allowed(mode: str) -> dict[str, Any]:
    tools = [{"type": "function", "function": {"name": "get_time"}}]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"tool_choice": "required"}, ["get_weather"]),
        ({"tool_choice": "required", "parallel_tool_calls": True}, ["get_weather"]),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": allowed("required")}, ["get_time"]),
        ({}, []),
        ({"tool_choice": "auto"}, []),
        ({"tool_choice": allowed("auto")}, []),
        ({"tool_choice": "none"}, []),
    ],
)
def test_after_a_tool_result_a_forced_tool_is_called_and_auto_answers(fields: dict[str, Any], names: list[str]) -> None:
    assert [function.name for function in functions_to_call(after_a_tool_result(**fields))] == names


def test_a_forced_call_after_a_tool_result_has_arguments_satisfying_the_parameters() -> None:
    [choice] = plan_reply(after_a_tool_result(tool_choice="required"), 5).choices
    [first_call] = plan_reply(chat("weather in Paris?", tools=TOOLS, tool_choice="required"), 5).choices[0].tool_calls

    assert choice.finish_reason == "tool_calls"
    assert (choice.content, choice.tokens) == (None, [])
    [call] = choice.tool_calls
    assert call.name == "get_weather"
    jsonschema.validate(orjson.loads(call.arguments), WEATHER["function"]["parameters"])
    assert call.id != first_call.id
    assert choice == plan_reply(after_a_tool_result(tool_choice="required"), 5).choices[0]


def test_auto_answers_a_tool_result_in_text() -> None:
    [choice] = plan_reply(after_a_tool_result(), 5).choices

    assert choice.tool_calls == ()
    assert choice.finish_reason == "stop"
    assert len(choice.tokens) == 5


def test_tool_calls_carry_arguments_that_satisfy_the_parameters() -> None:
    reply = plan_reply(chat(tools=TOOLS), 16)

    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.content is None
    assert choice.tokens == []
    weather, clock = choice.tool_calls
    assert (weather.name, clock.name) == ("get_weather", "get_time")
    arguments = orjson.loads(weather.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert arguments["unit"] == "celsius"
    assert arguments["days"] == 3
    assert set(arguments["city"].split()) <= set(WORDS)
    assert orjson.loads(clock.arguments) == {}
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", call.id) for call in choice.tool_calls)
    assert weather.id != clock.id
    assert reply.usage()["completion_tokens"] == len(weather.arguments) // 4 + 1


def test_tool_calls_are_deterministic_per_prompt_and_choice() -> None:
    first, second = plan_reply(chat(tools=TOOLS, n=2), 4).choices

    assert first.tool_calls == plan_reply(chat(tools=TOOLS), 4).choices[0].tool_calls
    assert first.tool_calls[0].id != second.tool_calls[0].id
    assert first.tool_calls[0].arguments != second.tool_calls[0].arguments
    assert plan_reply(chat("another prompt", tools=TOOLS), 4).choices[0].tool_calls[0].id != first.tool_calls[0].id


def test_tool_call_arguments_stream_in_pieces_of_eight_characters() -> None:
    [call, _] = plan_reply(chat(tools=TOOLS), 4).choices[0].tool_calls

    pieces = call.argument_pieces()

    assert "".join(pieces) == call.arguments
    assert all(len(piece) == 8 for piece in pieces[:-1])
    assert 0 < len(pieces[-1]) <= 8


def test_json_object_mode_answers_a_json_object_of_the_reply_words() -> None:
    [text] = plan_reply(chat(), 6).choices
    [json_choice] = plan_reply(chat(response_format={"type": "json_object"}), 6).choices

    assert orjson.loads(json_choice.content or "") == {"answer": text.content}
    assert len(json_choice.tokens) > 1
    assert json_choice.finish_reason == "stop"


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number", "minimum": 10},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "author": {"$ref": "#/$defs/person"},
        "verdict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    },
    "required": ["title", "score", "tags", "author", "verdict"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "kind": {"const": "human"}},
            "required": ["name", "kind"],
            "additionalProperties": False,
        }
    },
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}


def test_json_schema_mode_answers_json_that_validates_against_the_schema() -> None:
    [choice] = plan_reply(chat(response_format=JSON_SCHEMA_FORMAT), 6).choices

    answer = orjson.loads(choice.content or "")
    jsonschema.validate(answer, ANSWER_SCHEMA)
    assert answer["author"]["kind"] == "human"
    assert "".join(choice.tokens) == choice.content
    assert plan_reply(chat(response_format=JSON_SCHEMA_FORMAT), 6).choices[0].content == choice.content


def test_a_token_cap_cuts_json_content_with_finish_reason_length() -> None:
    [whole] = plan_reply(chat(response_format=JSON_SCHEMA_FORMAT), 6).choices
    [cut] = plan_reply(chat(response_format=JSON_SCHEMA_FORMAT, max_tokens=3), 6).choices

    assert cut.tokens == whole.tokens[:3]
    assert cut.finish_reason == "length"


def test_logprobs_give_one_entry_per_token_with_less_likely_alternatives() -> None:
    [choice] = plan_reply(chat(logprobs=True, top_logprobs=3), 5).choices

    assert choice.logprobs is not None
    assert [entry["token"] for entry in choice.logprobs] == choice.tokens
    for entry in choice.logprobs:
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] < 0
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == 3
        logprobs = [entry["logprob"], *(alternative["logprob"] for alternative in alternatives)]
        assert logprobs == sorted(logprobs, reverse=True)
        assert len(set(logprobs)) == 4
        assert entry["token"] not in {alternative["token"] for alternative in alternatives}
        assert all(alternative["bytes"] == list(alternative["token"].encode()) for alternative in alternatives)
    assert choice.logprobs == plan_reply(chat(logprobs=True, top_logprobs=3), 5).choices[0].logprobs


def test_logprobs_without_top_logprobs_have_no_alternatives_and_none_when_not_asked() -> None:
    [with_logprobs] = plan_reply(chat(logprobs=True), 3).choices
    [without] = plan_reply(chat(logprobs=False), 3).choices

    assert with_logprobs.logprobs is not None
    assert all(entry["top_logprobs"] == [] for entry in with_logprobs.logprobs)
    assert without.logprobs is None


@pytest.mark.parametrize(
    ("effort", "tokens"), [("minimal", 2), ("low", 4), ("medium", 8), ("high", 12), ("xhigh", 12), ("none", 0)]
)
def test_reasoning_effort_sets_how_long_the_model_thinks(effort: str, tokens: int) -> None:
    reply = plan_reply(chat(reasoning_effort=effort), 5)

    [choice] = reply.choices
    assert len(choice.reasoning) == tokens
    assert len(choice.tokens) == 5
    assert reply.usage()["completion_tokens"] == tokens + 5
    assert reply.usage()["completion_tokens_details"] == {"reasoning_tokens": tokens}


def test_reasoning_tokens_per_request_win_over_the_effort() -> None:
    [choice] = plan_reply(chat(reasoning_effort="high"), 5, reasoning_tokens=3).choices

    assert len(choice.reasoning) == 3
    assert set(token.strip() for token in choice.reasoning) <= set(WORDS)


def test_the_token_cap_counts_reasoning_first() -> None:
    [partly] = plan_reply(chat(reasoning_effort="low", max_tokens=6), 5).choices
    [thinking_only] = plan_reply(chat(reasoning_effort="medium", max_tokens=6), 5).choices

    assert (len(partly.reasoning), len(partly.tokens), partly.finish_reason) == (4, 2, "length")
    assert (len(thinking_only.reasoning), thinking_only.tokens, thinking_only.finish_reason) == (6, [], "length")


def test_stop_cuts_the_reply_before_the_first_stop_sequence() -> None:
    [whole] = plan_reply(chat(), 16).choices
    third = whole.tokens[2]

    [cut] = plan_reply(chat(stop=[third, "never appears"]), 16).choices

    assert cut.finish_reason == "stop"
    assert whole.content is not None
    assert cut.content == whole.content[: whole.content.index(third)]
    assert third not in (cut.content or "")


def test_stop_inside_a_token_keeps_the_part_before_it() -> None:
    tokens = ["the", " gateway", " routes"]

    assert cut_at_stop(tokens, ["tew", "ute"])
    assert tokens == ["the", " ga"]


def test_stop_sequence_absent_from_the_reply_changes_nothing() -> None:
    tokens = ["the", " gateway"]

    assert not cut_at_stop(tokens, ["zebra"])
    assert tokens == ["the", " gateway"]
    [choice] = plan_reply(chat(max_tokens=4, stop="zebra"), 16).choices
    assert (len(choice.tokens), choice.finish_reason) == (4, "length")
