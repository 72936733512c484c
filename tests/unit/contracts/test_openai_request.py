from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.contracts.openai import ChatCompletionRequest

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_fields_reach_the_hoster_and_routing_fields_do_not() -> None:
    request = ChatCompletionRequest.model_validate(
        BASE | {"top_k": 5, "repetition_penalty": 1.1, "tier": "cheapest", "privacy_mode": True, "seed": 3}
    )
    body = request.hoster_body()
    assert body["top_k"] == 5
    assert body["repetition_penalty"] == 1.1
    assert body["seed"] == 3
    assert "tier" not in body
    assert "privacy_mode" not in body
    assert request.routing().tier == "cheapest"
    assert request.routing().privacy_mode is True


def test_message_extra_fields_and_content_parts_pass_through() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    body = ChatCompletionRequest.model_validate(BASE | {"messages": messages}).hoster_body()
    assert body["messages"] == messages


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 2.5), ("top_p", -0.1), ("presence_penalty", 3), ("max_tokens", 0), ("n", 0)],
)
def test_out_of_range_parameters_are_rejected_naming_the_parameter(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(BASE | {field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_empty_messages_and_unknown_role_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(BASE | {"messages": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(BASE | {"messages": [{"role": "robot", "content": "x"}]})


def test_hoster_lists_must_be_uuids() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(BASE | {"allow_hosters": ["not-a-uuid"]})
    assert info.value.errors()[0]["loc"][0] == "allow_hosters"
    ok = ChatCompletionRequest.model_validate(BASE | {"deny_hosters": ["5F0C6F3E-2D7A-4C55-9A51-0D3C2B6F7A01"]})
    assert ok.routing().deny_hosters == ["5f0c6f3e-2d7a-4c55-9a51-0d3c2b6f7a01"]
