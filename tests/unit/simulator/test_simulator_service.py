"""The simulator's pure logic: deterministic replies, token counts, fault selection and OpenAI's shapes."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.simulator.service import (
    WORDS,
    Behaviour,
    ChatCompletionRequest,
    SimulatorOverride,
    completion,
    completion_chunk,
    estimate_prompt_tokens,
    message_texts,
    new_completion,
    plan_reply,
    reply_tokens,
    resolve_behaviour,
    sse_event,
    usage_chunk,
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

    assert len(reply.tokens) == 16
    assert reply.finish_reason == "stop"
    assert reply.prompt_tokens == len("Tell me about the network.") // 4


def test_max_tokens_below_the_reply_length_cuts_it_with_finish_reason_length() -> None:
    reply = plan_reply(chat(max_tokens=4), 16)

    assert len(reply.tokens) == 4
    assert reply.finish_reason == "length"


def test_max_tokens_above_the_reply_length_does_not_cut_it() -> None:
    reply = plan_reply(chat(max_tokens=100), 16)

    assert len(reply.tokens) == 16
    assert reply.finish_reason == "stop"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    reply = plan_reply(chat(max_tokens=10, max_completion_tokens=3), 16)

    assert len(reply.tokens) == 3
    assert reply.finish_reason == "length"


def test_usage_counts_prompt_and_completion_tokens() -> None:
    reply = plan_reply(chat("x" * 40, max_tokens=5), 16)

    assert reply.usage() == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


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
            "message": {"role": "assistant", "content": reply.content, "refusal": None},
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
    request = chat(temperature=0.2, n=1, tools=[], user="someone")

    assert request.model == "demo-model"


def test_integer_timings_are_accepted_as_floats() -> None:
    assert chat(simulator={"ttft_ms": 5}).simulator == SimulatorOverride(ttft_ms=5.0)
