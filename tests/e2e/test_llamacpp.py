"""A real inference engine behind the real adapter: llama-cpp-python's server on a tiny random llama model, the
``llamacpp`` profile, the whole stack in front. What the engine counts is what the routing record shows.

The model's tokenizer is the one the engine uses (the GGUF's vocabulary and merges, GPT-2's pre-tokenizer), so
the test computes the engine's prompt count itself: the chat template rendered and encoded with
``tokenizer.json``. An estimate (about four characters a token) would not match it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from libs.contracts.pricing import estimate_prompt_tokens
from libs.devstack.stack import DEMO_MODEL, AdapterSpec, Stack, llamacpp_hoster, throwaway_config
from libs.devstack.tinymodel import BOS_TOKEN, CHAT_TEMPLATE, CORPUS, TinyModel, tiny_model
from services.hoster_adapter.profiles import plain_messages
from tests.e2e.records import routing_record

pytestmark = pytest.mark.e2e

SEED = 0


@pytest.fixture(scope="module")
def model() -> TinyModel:
    """The tiny model the engine serves (written once, then read from the cache)."""
    return tiny_model(SEED)


@pytest.fixture(scope="module")
def stack(model: TinyModel) -> Iterator[Stack]:
    """nats-server, PostgreSQL, the services, and one llama.cpp hoster behind a platform adapter."""
    engine, hoster = llamacpp_hoster(seed=SEED, capacity=4)  # the engine queues what it cannot compute at once;
    # capacity 1 made a request sent right after another's answer look "at capacity" until the next heartbeat
    assert engine.models[DEMO_MODEL] == model
    config = throwaway_config(
        engines=[engine],
        adapters=[AdapterSpec("hoster_adapter", [hoster], {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"})],
        service_env={"CS_ROUTER_HOSTER_TTL_S": "2", "CS_INGRESS_IDLE_TIMEOUT_S": "10"},
    )
    running = Stack(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    """A key of an account with plenty of credits."""
    return stack.create_account(credits="1000")[1]


def post(stack: Stack, key: str, path: str, **body: Any) -> httpx.Response:
    """One unstreamed request to the gateway."""
    return httpx.post(
        f"{stack.config.api_base}/{path}", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
    )


def engine_prompt_tokens(model: TinyModel, messages: list[dict[str, Any]], tools: Any = None) -> int:
    """The engine's prompt count: the GGUF's chat template rendered as llama-cpp-python renders it (messages
    as the adapter sends them), encoded with the model's tokenizer.json."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    prompt = environment.from_string(CHAT_TEMPLATE).render(
        messages=plain_messages(messages), tools=tools, add_generation_prompt=True, bos_token=BOS_TOKEN
    )
    return len(model.tokenizer().encode(prompt).ids)


def test_an_unstreamed_chat_completion_is_billed_the_engines_own_counts(
    stack: Stack, key: str, model: TinyModel
) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "How many steps lead up to the lamp room of the lighthouse?"},
    ]
    response = post(stack, key, "chat/completions", model=DEMO_MODEL, messages=messages, max_tokens=12, seed=1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"]
    prompt_tokens = engine_prompt_tokens(model, messages)
    assert prompt_tokens != estimate_prompt_tokens({"messages": messages})  # else the test proves nothing
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert 0 < body["usage"]["completion_tokens"] <= 12
    record = routing_record(stack, key, body["id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        prompt_tokens,
        body["usage"]["completion_tokens"],
    )
    assert record["usage_discrepancy"] is None
    assert [a["outcome"] for a in record["attempts"]] == ["succeeded"]


def test_a_streamed_chat_completion_streams_the_engines_tokens_and_ends_with_usage(stack: Stack, key: str) -> None:
    chunks: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{stack.config.api_base}/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Tell me about the market."}],
              "max_tokens": 16, "seed": 2, "stream": True, "stream_options": {"include_usage": True}},
        timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content
    # llama-cpp-python's stream carries no usage: the adapter's last chunk has the gateway's own count of it.
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 16
    record = routing_record(stack, key, chunks[0]["id"])
    assert record["completion_tokens"] == usage["completion_tokens"]


def test_n_2_is_dropped_and_answered_with_the_one_choice_the_engine_makes(stack: Stack, key: str) -> None:
    # llama-cpp-python's server ignores n (one choice, whatever was asked); the profile drops it, and the
    # routing record says so.
    response = post(stack, key, "chat/completions", model=DEMO_MODEL, n=2, max_tokens=6, seed=3,
                    messages=[{"role": "user", "content": "Name a tree."}])  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0]
    assert body["choices"][0]["message"]["content"]
    record = routing_record(stack, key, body["id"])
    assert "n" in record["attempts"][0]["dropped_parameters"]


def test_a_text_completion_is_billed_the_engines_counts(stack: Stack, key: str, model: TinyModel) -> None:
    prompt = "The morning came slowly over the valley, and"
    response = post(stack, key, "completions", model=DEMO_MODEL, prompt=prompt, max_tokens=10, seed=4)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == len(model.tokenizer().encode(prompt).ids)  # no BOS is added
    record = routing_record(stack, key, body["id"])
    assert record["endpoint"] == "completions"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        body["usage"]["prompt_tokens"],
        body["usage"]["completion_tokens"],
    )


def test_a_long_conversation_with_tool_calls_is_answered_and_counted(stack: Stack, key: str, model: TinyModel) -> None:
    # Many turns (about a thousand tokens of the model's 2048), a developer message and an assistant's tool
    # call with "content": null, both of which llama-cpp-python refuses as OpenAI's SDKs send them.
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    messages: list[dict[str, Any]] = [{"role": "developer", "content": "Answer briefly."}]
    for i in range(0, 48, 2):
        messages += [{"role": "user", "content": lines[i]}, {"role": "assistant", "content": lines[i + 1]}]
    tools = [{"type": "function", "function": {"name": "tide_table", "description": "High and low tides",
                                               "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip
    messages += [
        {"role": "user", "content": "When is high tide?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "tide_table", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "High tide at 10:20."},
    ]  # fmt: skip
    response = post(stack, key, "chat/completions", model=DEMO_MODEL, messages=messages, tools=tools, max_tokens=8,
                    seed=5)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"]
    prompt_tokens = engine_prompt_tokens(model, messages, tools)
    assert prompt_tokens > 800
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    record = routing_record(stack, key, body["id"])
    assert record["prompt_tokens"] == prompt_tokens
