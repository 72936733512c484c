from __future__ import annotations

from typing import Any

import pytest

from services.hoster_adapter.profiles import PROFILES

BODY: dict[str, Any] = {
    "model": "public",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "max_tokens": 20,
    "temperature": 0.2,
    "seed": 7,
    "top_k": 40,
    "repetition_penalty": 1.1,
    "tools": [{"type": "function"}],
    "stream_options": {"include_usage": False},
    "vendor_extra": {"a": 1},
}


def test_plain_openai_compatible_servers_get_everything_the_client_sent() -> None:
    body, dropped = PROFILES["vllm"].prepare(BODY, "meta-llama/Llama-3.1-8B", 20)
    assert dropped == []
    assert body["model"] == "meta-llama/Llama-3.1-8B"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert {k: body[k] for k in ("top_k", "repetition_penalty", "seed", "vendor_extra")} == {
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 7,
        "vendor_extra": {"a": 1},
    }
    assert PROFILES["openai"].advertised() is None


def test_naga_takes_max_completion_tokens_and_drops_what_it_does_not_know() -> None:
    body, dropped = PROFILES["naga"].prepare(BODY, "gpt-4o-mini", 20)
    assert body["max_completion_tokens"] == 20
    assert "max_tokens" not in body
    assert dropped == ["repetition_penalty", "seed", "top_k", "vendor_extra"]
    assert body["tools"] == BODY["tools"]


def test_comput3_gets_only_its_parameters_and_no_stream_options() -> None:
    body, dropped = PROFILES["comput3"].prepare(BODY | {"max_completion_tokens": 9}, "hermes4:70b", 9)
    assert set(body) == {"model", "messages", "stream", "max_tokens", "temperature"}
    assert body["max_tokens"] == 9  # the limit the reservation was priced on, under the upstream's name
    assert "tools" in dropped


def test_generalcompute_keeps_open_model_samplers_and_llamacpp_renames_the_penalty() -> None:
    body, dropped = PROFILES["generalcompute"].prepare(BODY, "m", 20)
    assert (body["top_k"], body["repetition_penalty"]) == (40, 1.1)
    assert "seed" in dropped
    llama, _ = PROFILES["llamacpp"].prepare(BODY, "m", 20)
    assert llama["repeat_penalty"] == 1.1
    assert "repetition_penalty" not in llama
    advertised = PROFILES["llamacpp"].advertised()
    assert advertised is not None
    assert "repetition_penalty" in advertised


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize(
    "limits",
    [{}, {"max_tokens": 10_000_000, "max_completion_tokens": 1}, {"max_completion_tokens": 5}, {"max_tokens": 3}],
    ids=["none", "disagreeing", "max_completion_tokens", "max_tokens"],
)
def test_every_profile_sends_the_reserved_limit_once_whatever_the_client_wrote(
    profile: str, limits: dict[str, int]
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **limits}
    prepared, dropped = PROFILES[profile].prepare(body, "m", 42)  # type: ignore[index]
    sent = {k: v for k, v in prepared.items() if k in ("max_tokens", "max_completion_tokens")}
    assert list(sent.values()) == [42], sent
    assert not {"max_tokens", "max_completion_tokens"} & set(dropped)


def test_llamacpp_gets_an_unstreamed_request_unstreamed_and_a_streamed_one_streamed_with_usage_asked() -> None:
    # llama-cpp-python's server reports usage only in a whole answer (its streams carry none, whatever
    # stream_options says): an unstreamed request is sent as one, so the engine's own counts are billed.
    whole, _ = PROFILES["llamacpp"].prepare(BODY, "m", 20, client_streams=False)
    assert whole["stream"] is False
    assert "stream_options" not in whole
    streamed, _ = PROFILES["llamacpp"].prepare(BODY | {"stream": True}, "m", 20, client_streams=True)
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}  # llama-server honours it
    # Other servers still stream everything (the adapter assembles the answer).
    assert PROFILES["vllm"].prepare(BODY, "m", 20, client_streams=False)[0]["stream"] is True


def test_llamacpp_gets_plain_messages_and_parallel_tool_calls_is_reported_dropped() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    body, dropped = PROFILES["llamacpp"].prepare(BODY | {"messages": messages, "parallel_tool_calls": False}, "m", 9)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert "parallel_tool_calls" in dropped
    assert messages[2]["content"] is None  # the client's body is left as it was
    # A server without a strict schema gets the messages as the client wrote them.
    assert PROFILES["vllm"].prepare(BODY | {"messages": messages}, "m", 9)[0]["messages"] == messages
