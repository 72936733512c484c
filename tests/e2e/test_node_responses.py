"""The Responses API through JavaScript clients: the official ``openai`` npm SDK's ``responses.*`` and the Vercel
AI SDK (``ai`` with ``@ai-sdk/openai``, whose default model is a Responses model), tools included.

``node/responses_check.mjs`` makes the calls and prints what the SDKs observed as one JSON object; the tests here
assert on it. Its dependencies come from ``node/package-lock.json`` (``npm ci --prefix tests/e2e/node``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from libs.devstack.stack import DEMO_MODEL, Stack
from tests.e2e.test_node_sdk import NODE_DIR, run_node

pytestmark = pytest.mark.e2e

SCRIPT_TIMEOUT_S = 90
REPLY_WORDS = 12  # the e2e simulator replies with 12 tokens, one word each
TOOL_ROUND_TRIP = ["message:user", "function_call", "function_call_output"]


@pytest.fixture(scope="module")
def observed(stack: Stack, api_key: str) -> dict[str, Any]:
    """What the two SDKs observed against the module's stack (one node run for every test here)."""
    return run_node("responses_check.mjs", [stack.config.api_base, api_key, DEMO_MODEL],
                    ("openai", "ai", "@ai-sdk/openai", "zod"), SCRIPT_TIMEOUT_S)  # fmt: skip


def assert_answered(response: dict[str, Any]) -> None:
    assert response["id"].startswith("resp_")
    assert response["object"] == "response"
    assert response["model"] == DEMO_MODEL
    assert response["status"] == "completed"
    assert response["output_types"] == ["message"]
    assert len(response["output_text"].split()) == REPLY_WORDS
    assert response["usage"]["output_tokens"] == REPLY_WORDS
    assert response["usage"]["input_tokens"] > 0


def test_runs_the_pinned_openai_sdk(observed: dict[str, Any]) -> None:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert observed["versions"]["openai"] == lock["packages"]["node_modules/openai"]["version"]


def test_create_with_a_string_and_with_items(observed: dict[str, Any]) -> None:
    sdk = observed["openai_sdk"]
    assert_answered(sdk["of_string"])
    assert_answered(sdk["of_items"])
    assert sdk["of_string_input_items"] == [{"type": "message", "role": "user"}]
    # Newest first, OpenAI's default order for input_items.
    assert sdk["of_items_input_items"] == [
        {"type": "message", "role": "user"},
        {"type": "message", "role": "developer"},
    ]


def test_responses_stream_runs_to_completed_and_its_final_response_is_stored(observed: dict[str, Any]) -> None:
    stream = observed["openai_sdk"]["stream"]
    events = stream["events"]
    assert events[:2] == ["response.created", "response.in_progress"]
    assert events[-1] == "response.completed"
    assert events.count("response.output_text.delta") == REPLY_WORDS
    assert "response.output_text.done" in events
    assert_answered(stream["final"])
    assert stream["final"]["output_text"] == stream["delta_text"]
    assert stream["stored_text"] == stream["delta_text"]


def test_create_with_stream_true_yields_the_same_events(observed: dict[str, Any]) -> None:
    raw = observed["openai_sdk"]["raw_stream"]
    assert raw["events"] == observed["openai_sdk"]["stream"]["events"]
    assert raw["completed_id"].startswith("resp_")
    assert raw["completed_status"] == "completed"
    assert raw["completed_output_types"] == ["message"]


def test_retrieve_gives_back_the_stored_response(observed: dict[str, Any]) -> None:
    sdk = observed["openai_sdk"]
    retrieved, created = sdk["retrieved"], sdk["of_string"]
    assert {k: retrieved[k] for k in ("id", "status", "output_text", "output_types")} == {
        k: created[k] for k in ("id", "status", "output_text", "output_types")
    }


def test_previous_response_id_carries_the_earlier_turn(observed: dict[str, Any]) -> None:
    sdk = observed["openai_sdk"]
    second, first = sdk["previous"], sdk["of_string"]
    assert_answered(second)
    assert second["previous_response_id"] == first["id"]
    # The hoster was sent the earlier turn (its input and answer) as well as the new input.
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    assert second["input_items"] == [{"type": "message", "role": "user"}]


def test_delete_removes_the_response(observed: dict[str, Any]) -> None:
    deleted = observed["openai_sdk"]["deleted"]
    assert deleted["returned"]["object"] == "response.deleted"
    assert deleted["returned"]["deleted"] is True
    for after in ("retrieve_after", "delete_again"):
        error = deleted[after]
        assert (error["raised"], error["class"], error["status"]) == (True, "NotFoundError", 404), error


def test_the_ai_sdk_model_speaks_the_responses_api(observed: dict[str, Any]) -> None:
    ai = observed["ai_sdk"]
    assert ai["provider"] == "openai.responses"
    assert {(r["method"], r["path"]) for r in ai["requests"]} == {("POST", "/v1/responses")}


def test_ai_sdk_generate_text_and_stream_text(observed: dict[str, Any]) -> None:
    ai = observed["ai_sdk"]
    generated = ai["generate_text"]
    assert len(generated["text"].split()) == REPLY_WORDS
    assert generated["finish_reason"] == "stop"
    assert generated["usage"]["outputTokens"] == REPLY_WORDS
    streamed = ai["stream_text"]
    assert streamed["pieces"] > 1
    assert len(streamed["text"].split()) == REPLY_WORDS
    assert streamed["final_text"] == streamed["text"]
    assert streamed["finish_reason"] == "stop"


@pytest.mark.parametrize("run", ["generate_text_tool", "stream_text_tool"])
def test_ai_sdk_runs_the_tool_then_answers(observed: dict[str, Any], run: str) -> None:
    result = observed["ai_sdk"][run]
    assert len(result["calls"]) == 1
    assert isinstance(result["calls"][0]["city"], str)  # arguments that satisfy the tool's schema
    call_step, answer_step = result["steps"]
    assert call_step["finish_reason"] == "tool-calls"
    assert (call_step["tool_calls"], call_step["tool_results"]) == (["weather"], ["weather"])
    assert answer_step["finish_reason"] == "stop"
    assert answer_step["tool_calls"] == []
    assert len(result["text"].split()) == REPLY_WORDS
    assert result["text"] == answer_step["text"]
    assert result["finish_reason"] == "stop"


def test_ai_sdk_sends_the_tool_result_back_in_the_second_request(observed: dict[str, Any]) -> None:
    with_tools = [r for r in observed["ai_sdk"]["requests"] if r["tools"] == ["weather"]]
    assert [(r["stream"], r["input_types"]) for r in with_tools] == [
        (False, ["message:user"]),
        (False, TOOL_ROUND_TRIP),
        (True, ["message:user"]),
        (True, TOOL_ROUND_TRIP),
    ]
