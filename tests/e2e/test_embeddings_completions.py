"""``/v1/embeddings`` and ``/v1/completions`` through the official SDK: routed to hosters that declare the
endpoint, billed per token, on the routing record, and valid against OpenAI's schemas."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from libs.devstack.processes import free_port
from libs.devstack.stack import (
    DEMO_EMBEDDING_MODEL,
    DEMO_HOSTER_ID,
    DEMO_MODEL,
    AdapterSpec,
    SimulatorSpec,
    Stack,
    demo_hoster,
    throwaway_config,
)
from tests.e2e.records import routing_record
from tests.openai_schema import openai_validator

pytestmark = pytest.mark.e2e

CHAT_ONLY = "cccccccc-0000-4000-8000-000000000001"
BROKEN = "cccccccc-0000-4000-8000-000000000002"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The demo hoster serving chat, text completions and embeddings, and a chat-only hoster of a model of
    its own (``chat-only``)."""
    models = '["demo-model", "demo-embedding", "chat-only"]'
    simulator = SimulatorSpec(
        "simulator", free_port(), {"CS_SIMULATOR_REPLY_TOKENS": "8", "CS_SIMULATOR_MODELS": models}
    )
    chat_only = {**demo_hoster(simulator.base_url, model="chat-only"), "id": CHAT_ONLY, "name": "chat-only-hoster"}
    chat_only["models"][0]["endpoints"] = ["chat.completions"]
    config = throwaway_config(
        simulators=[simulator],
        adapters=[
            AdapterSpec(
                "hoster_adapter",
                [demo_hoster(simulator.base_url, embedding_model=DEMO_EMBEDDING_MODEL), chat_only],
                {"CS_ADAPTER_HEARTBEAT_INTERVAL_S": "0.5"},
            )
        ],
    )
    running = Stack(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def failover_stack() -> Iterator[Stack]:
    """The demo hoster and a cheaper embedding hoster whose server fails every request (``tier: cheapest``
    tries it first), on a stack of their own so no other test has cooled the broken one down."""
    simulator = SimulatorSpec("simulator", free_port())
    broken = SimulatorSpec("broken", free_port(), {"CS_SIMULATOR_FAULT": "error", "CS_SIMULATOR_FAULT_RATE": "1"})
    failing = demo_hoster(broken.base_url, embedding_model=DEMO_EMBEDDING_MODEL)
    failing |= {"id": BROKEN, "name": "broken-hoster", "models": failing["models"][1:]}
    failing["models"][0]["input_price"] = "0.01"
    hosters = [demo_hoster(simulator.base_url, embedding_model=DEMO_EMBEDDING_MODEL), failing]
    config = throwaway_config(simulators=[simulator, broken], adapters=[AdapterSpec("hoster_adapter", hosters)])
    running = Stack(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.create_account(credits="1000")[1]


@pytest.fixture(scope="module")
def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0)


def post(stack: Stack, key: str, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{stack.config.api_base}/{path}", json=body, headers={"authorization": f"Bearer {key}"})


def test_embeddings_of_one_string_and_of_a_list_through_the_sdk(sdk: openai.OpenAI) -> None:
    one = sdk.embeddings.create(model=DEMO_EMBEDDING_MODEL, input="The quick brown fox")
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == 32
    assert abs(sum(x * x for x in one.data[0].embedding) - 1.0) < 1e-4  # the simulator's unit vectors
    many = sdk.embeddings.create(model=DEMO_EMBEDDING_MODEL, input=["The quick brown fox", "jumps over"])
    assert [d.index for d in many.data] == [0, 1]
    # Deterministic: the same input, the same vector, wherever it sits in the list.
    assert many.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-6)
    assert many.data[1].embedding != many.data[0].embedding
    assert many.model == DEMO_EMBEDDING_MODEL
    assert many.usage.prompt_tokens > 0
    assert many.usage.total_tokens == many.usage.prompt_tokens


def test_embeddings_as_floats_validate_and_base64_decodes_to_the_same_vector(stack: Stack, key: str) -> None:
    floats = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, input=[[1, 2, 3], [4, 5]], dimensions=8)
    assert floats.status_code == 200, floats.text
    body = floats.json()
    openai_validator("CreateEmbeddingResponse").validate({k: v for k, v in body.items()})
    assert [len(d["embedding"]) for d in body["data"]] == [8, 8]
    assert body["usage"]["cost"] > 0
    packed = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, input=[[1, 2, 3], [4, 5]], dimensions=8,
                  encoding_format="base64").json()  # fmt: skip
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(body["data"][0]["embedding"], abs=1e-6)


def test_embeddings_are_billed_per_input_token_and_recorded(stack: Stack, key: str) -> None:
    response = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, input="x" * 400)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == 100  # the simulator's count, within the request's bound
    record = routing_record(stack, key, response.headers["x-request-id"])
    assert record["model"] == DEMO_EMBEDDING_MODEL
    assert record["endpoint"] == "embeddings"
    assert record["prompt_tokens"] == 100
    assert record["completion_tokens"] == 0
    # 100 tokens at 0.02 credits per million, plus the platform's fee: what the client was told it cost.
    assert Decimal(str(record["cost"])) == Decimal(str(usage["cost"]))
    assert record["attempts"][0]["outcome"] == "succeeded"


def test_a_model_served_only_for_chat_is_refused_on_the_other_endpoints(stack: Stack, key: str) -> None:
    for path, field in (("embeddings", "input"), ("completions", "prompt")):
        response = post(stack, key, path, model="chat-only", **{field: "hello"})
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_supported"
        assert error["param"] == "model"
    refused = post(stack, key, "embeddings", model=DEMO_MODEL, input="hello")
    assert refused.status_code == 404


def test_bad_embedding_input_is_a_400_naming_the_parameter(stack: Stack, key: str) -> None:
    for body, param in (({"input": ""}, "input"), ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
                        ({}, "input"), ({"input": "a", "dimensions": 0}, "dimensions")):  # fmt: skip
        response = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, **body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text


def test_text_completion_whole_and_streamed_through_the_sdk(sdk: openai.OpenAI, stack: Stack, key: str) -> None:
    whole = sdk.completions.create(model=DEMO_MODEL, prompt="Once upon a time", max_tokens=5)
    assert whole.object == "text_completion"
    assert whole.id.startswith("cmpl-")
    assert whole.model == DEMO_MODEL
    assert whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 5
    streamed = list(
        sdk.completions.create(
            model=DEMO_MODEL,
            prompt="Once upon a time",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == 5
    record = routing_record(stack, key, whole.id)
    assert record["completion_tokens"] == 5
    assert record["endpoint"] == "completions"


def test_text_completion_bodies_and_chunks_validate_with_echo_logprobs_n_and_stop(stack: Stack, key: str) -> None:
    validator = openai_validator("CreateCompletionResponse")
    body = post(stack, key, "completions", model=DEMO_MODEL, prompt=["Tell me", "Ask me"], n=2, max_tokens=4,
                echo=True, logprobs=2).json()  # fmt: skip
    validator.validate(body)
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2, 3]
    assert all(c["text"].startswith("Tell me") for c in body["choices"] if c["index"] < 2)
    assert all(len(c["logprobs"]["tokens"]) == 4 for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 16
    with httpx.stream("POST", f"{stack.config.api_base}/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": DEMO_MODEL, "prompt": "Tell me", "max_tokens": 4, "stream": True,
                            "logprobs": 1}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    # OpenAI's document gives streamed chunks the body's shape, where finish_reason is a string; OpenAI's API
    # (and vLLM's) sends null until a choice finishes, as we do: validated with it filled in.
    for chunk in chunks:
        validator.validate(
            chunk | {"choices": [c | {"finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]}
        )
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}
    assert {c["object"] for c in chunks} == {"text_completion"}


def test_text_completion_errors_keep_the_envelope(stack: Stack, key: str) -> None:
    missing = post(stack, key, "completions", model=DEMO_MODEL)
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "prompt"
    bad = post(stack, key, "completions", model=DEMO_MODEL, prompt="x", logprobs=9)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "logprobs"
    unknown = post(stack, key, "completions", model="never-served", prompt="x")
    assert unknown.status_code == 404


def test_models_list_the_endpoints_each_model_serves(sdk: openai.OpenAI, stack: Stack) -> None:
    listing = httpx.get(f"{stack.config.api_base}/models").json()["data"]
    endpoints = {m["id"]: m["endpoints"] for m in listing}
    assert endpoints[DEMO_MODEL] == ["/v1/chat/completions", "/v1/completions"]
    assert endpoints[DEMO_EMBEDDING_MODEL] == ["/v1/embeddings"]
    assert endpoints["chat-only"] == ["/v1/chat/completions"]


def test_an_embedding_request_fails_over_from_a_broken_hoster_and_pays_only_the_one_that_served(
    failover_stack: Stack,
) -> None:
    stack, key = failover_stack, failover_stack.create_account(credits="10")[1]
    response = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, input="fail me over", tier="cheapest")
    assert response.status_code == 200, response.text
    assert response.headers["x-computeshare-attempts"] == "2"
    record = routing_record(stack, key, response.headers["x-request-id"])
    assert [(a["hoster_id"], a["outcome"]) for a in record["attempts"]] == [
        (BROKEN, "failed"),
        (DEMO_HOSTER_ID, "succeeded"),
    ]
    assert Decimal(str(record["cost"])) == Decimal(str(response.json()["usage"]["cost"]))
    # Pinned to the broken hoster alone, the client gets the failure, in OpenAI's envelope, and pays nothing.
    pinned = post(stack, key, "embeddings", model=DEMO_EMBEDDING_MODEL, input="x", allow_hosters=[BROKEN])
    assert pinned.status_code in (500, 503), pinned.text
    assert pinned.json()["error"]["type"] == "server_error"


def test_a_hoster_inflating_embedding_usage_is_held_to_the_bytes_the_client_sent(stack: Stack, key: str) -> None:
    body = {"model": DEMO_EMBEDDING_MODEL, "input": "x" * 400, "allow_hosters": [DEMO_HOSTER_ID],
            "simulator": {"usage_factor": 1000}}  # fmt: skip
    response = post(stack, key, "embeddings", **body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    bound = len(orjson.dumps({k: v for k, v in body.items() if k != "allow_hosters"})) + 64
    assert 100 < usage["prompt_tokens"] <= bound  # the hoster claimed 100,000
    record = routing_record(stack, key, response.headers["x-request-id"])
    assert record["prompt_tokens"] == usage["prompt_tokens"]
    assert Decimal(str(record["cost"])) == Decimal(str(usage["cost"]))


def test_a_text_completion_asking_for_more_choices_than_an_answer_holds_is_the_clients_error(
    stack: Stack, key: str
) -> None:
    response = post(stack, key, "completions", model=DEMO_MODEL, prompt=["a"] * 65, n=2, max_tokens=1)
    assert response.status_code == 400, response.text
    assert "too_many_choices" in response.json()["error"]["message"]
    assert response.headers["x-computeshare-attempts"] == "1"  # no failover: no hoster is at fault
