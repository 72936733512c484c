"""What an OpenAI client gets from us: every feature through the official SDK, every body and chunk valid
against OpenAI's published schemas, the client's JSON reaching the hoster intact, and the error statuses."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from libs.devstack.processes import free_port
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, SimulatorSpec, Stack, demo_hoster, throwaway_config
from services.ingress.handlers import MAX_JSON_DEPTH
from tests.e2e.records import routing_record
from tests.openai_schema import openai_validator
from tests.unit.ingress.test_json_depth import nested

pytestmark = pytest.mark.e2e

NAGA = "bbbbbbbb-0000-4000-8000-000000000001"
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def compat() -> Iterator[Stack]:
    """The demo hoster (plain OpenAI-compatible) and a naga-profile hoster of another model, both simulated;
    the ingress refuses bodies over 64 KiB."""
    simulator = SimulatorSpec("simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "12"})
    naga = {
        **demo_hoster(simulator.base_url, model="naga-model", upstream_model="demo-model"),
        "id": NAGA,
        "name": "naga",
        "cloud": True,
        "profile": "naga",
    }
    config = throwaway_config(
        simulators=[simulator],
        adapters=[AdapterSpec("hoster_adapter", [demo_hoster(simulator.base_url), naga])],
        service_env={"CS_INGRESS_MAX_BODY_BYTES": str(64 * 1024)},
    )
    stack = Stack(config).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(compat: Stack) -> str:
    return compat.create_account(credits="1000")[1]


@pytest.fixture(scope="module")
def sdk(compat: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=compat.config.api_base, api_key=key, max_retries=0, timeout=30)


def last_upstream_body(stack: Stack) -> dict[str, Any]:
    port = stack.config.simulators[0].port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as response:
        body: dict[str, Any] = json.load(response)["last_request_body"]
        return body


def raw_json(compat: Stack, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{compat.config.api_base}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def stream_chunks(compat: Stack, key: str, **body: Any) -> list[dict[str, Any]]:
    """Every chunk of an SSE stream, as sent; asserts it ends with ``[DONE]``."""
    with httpx.stream(
        "POST",
        f"{compat.config.api_base}/chat/completions",
        json=body | {"stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def assert_valid_completion(body: dict[str, Any]) -> None:
    openai_validator("CreateChatCompletionResponse").validate(body)


def assert_valid_chunks(chunks: list[dict[str, Any]]) -> None:
    validator = openai_validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        validator.validate(chunk)


FEATURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "n=2": {"n": 2},
    "tools": {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "strict": True, "schema": WEATHER_TOOL["function"]["parameters"]},
        }
    },
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "reasoning": {"reasoning_effort": "low"},
    "everything": {
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["zzz"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logit_bias": {"50256": -100},
        "user": "u-1",
        "top_k": 40,
        "repetition_penalty": 1.05,
        "max_completion_tokens": 50,
    },
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_bodies_and_chunks_validate_against_openais_schemas(compat: Stack, key: str, feature: str) -> None:
    params = {"model": DEMO_MODEL, "messages": MESSAGES, **FEATURES[feature]}
    response = raw_json(compat, key, **params)
    assert response.status_code == 200, response.text
    assert_valid_completion(response.json())
    assert_valid_chunks(stream_chunks(compat, key, **params, stream_options={"include_usage": True}))


def test_what_the_client_sent_reaches_the_hoster_intact(compat: Stack, key: str) -> None:
    params = {
        "model": DEMO_MODEL,
        "messages": MESSAGES,
        **FEATURES["everything"],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": False,
        "metadata": {"team": "a"},
        "tier": "cheapest",
    }
    assert raw_json(compat, key, **params).status_code == 200
    upstream = last_upstream_body(compat)
    sent = {k: v for k, v in params.items() if k != "tier"}
    assert {k: upstream[k] for k in sent} == sent
    assert "tier" not in upstream  # routing fields stay in the gateway
    assert upstream["stream"] is True  # the adapter always streams, to see progress


def test_a_body_nested_up_to_the_documented_depth_is_served(compat: Stack, key: str) -> None:
    deep = nested(MAX_JSON_DEPTH - 1)  # the body itself is the first level
    response = raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, extra=deep)
    assert response.status_code == 200, response.text
    assert last_upstream_body(compat)["extra"] == deep
    too_deep = raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, extra=nested(MAX_JSON_DEPTH))
    assert too_deep.status_code == 400
    assert too_deep.json()["error"]["code"] == "json_too_deep"


def test_tool_calls_through_the_sdk_stream_the_way_openai_streams_them(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    arguments = ""
    names = []
    tools: Any = [WEATHER_TOOL]
    stream: Any = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, tools=tools, stream=True)
    for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
            arguments += (delta_call.function.arguments or "") if delta_call.function else ""
    assert names == ["get_weather"]
    assert json.loads(arguments) == json.loads(call.function.arguments)  # type: ignore[union-attr]
    history: Any = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = sdk.chat.completions.create(model=DEMO_MODEL, tools=[WEATHER_TOOL], messages=history)  # type: ignore[list-item]
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content


def test_json_mode_n_logprobs_and_reasoning_through_the_sdk(sdk: openai.OpenAI) -> None:
    schema_format: Any = FEATURES["json_schema"]["response_format"]
    structured = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, response_format=schema_format)
    assert isinstance(json.loads(structured.choices[0].message.content or "")["city"], str)
    two = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage is not None
    assert two.usage.completion_tokens == 24
    scored = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2)
    assert scored.choices[0].logprobs is not None
    assert scored.choices[0].logprobs.content is not None
    assert all(len(t.top_logprobs) == 2 for t in scored.choices[0].logprobs.content)
    thought = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, reasoning_effort="low")
    assert thought.choices[0].message.model_extra is not None
    assert thought.choices[0].message.model_extra["reasoning_content"]


async def test_async_sdk_and_raw_response_headers(compat: Stack, key: str) -> None:
    client = openai.AsyncOpenAI(base_url=compat.config.api_base, api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model=DEMO_MODEL, messages=MESSAGES)
    assert raw.headers["x-computeshare-attempts"] == "1"
    assert raw.headers["x-request-id"] == (raw.parse()).id
    stream = await client.chat.completions.create(
        model=DEMO_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    await client.close()


def test_parameters_a_hoster_does_not_take_are_dropped_and_recorded_unless_required(compat: Stack, key: str) -> None:
    response = raw_json(compat, key, model="naga-model", messages=MESSAGES, seed=7, top_k=5, max_tokens=20)
    assert response.status_code == 200
    upstream = last_upstream_body(compat)
    assert "seed" not in upstream
    assert upstream["max_completion_tokens"] == 20
    record = routing_record(compat, key, response.json()["id"])
    assert record["attempts"][0]["dropped_parameters"] == ["seed", "top_k"]
    strict = raw_json(compat, key, model="naga-model", messages=MESSAGES, seed=7, require_parameters=True)
    assert strict.status_code == 503
    assert "require_parameters" in strict.json()["error"]["message"]


def test_errors_keep_the_envelope_and_openais_statuses(compat: Stack, key: str) -> None:
    base = compat.config.api_base
    auth = {"authorization": f"Bearer {key}"}
    cases = [
        (
            httpx.post(
                f"{base}/chat/completions", content=b'{"model": ', headers=auth | {"content-type": "application/json"}
            ),
            400,
        ),
        (
            httpx.post(f"{base}/chat/completions", content=b"model=x", headers=auth | {"content-type": "text/plain"}),
            415,
        ),
        (raw_json(compat, key, model=DEMO_MODEL, messages=[{"role": "user", "content": "x" * 70_000}]), 413),
        (httpx.get(f"{base}/no/such/route", headers=auth), 404),
        (raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, temperature="hot"), 400),
        (raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, max_tokens=10**30), 400),
        (raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, n=10**6), 400),
        (
            httpx.post(
                f"{base}/chat/completions",
                content=b"[" * 5000 + b"]" * 5000,
                headers=auth | {"content-type": "application/json"},
            ),
            400,
        ),
        (
            raw_json(
                compat,
                key,
                model=DEMO_MODEL,
                messages=[{"role": "user", "content": [{"type": "text", "text": {"deep": [[[[1]]]]}}]}],
            ),
            400,
        ),
        # Nested past the documented depth (an unknown field no model checks): a 400, not a 500 deeper in.
        (raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, extra=nested(MAX_JSON_DEPTH + 236)), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    wrong_type = raw_json(compat, key, model=DEMO_MODEL, messages=MESSAGES, temperature="hot").json()["error"]
    assert wrong_type["param"] == "temperature"
    missing_tool_call_id: Any = [{"role": "tool", "content": "no id"}]
    with pytest.raises(openai.BadRequestError) as bad:
        openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(
            model=DEMO_MODEL, messages=missing_tool_call_id
        )
    assert bad.value.param == "messages[0]"


def test_models_list_the_live_network_with_prices_and_hoster_counts(sdk: openai.OpenAI) -> None:
    models = {m.id: m for m in sdk.models.list().data}
    assert set(models) == {DEMO_MODEL, "naga-model"}
    demo = models[DEMO_MODEL].model_extra
    assert demo is not None
    assert demo["hosters"] == 1
    assert demo["pricing"]["input"] == {"min": 0.5, "max": 0.5}
    assert demo["context_length"] == 8192
    assert sdk.models.retrieve("naga-model").id == "naga-model"
