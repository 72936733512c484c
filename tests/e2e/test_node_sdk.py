"""The official ``openai`` npm SDK against the whole stack, as a JavaScript user would call it.

``node/sdk_check.mjs`` makes the calls and prints what the SDK observed as one JSON object; the tests here
assert on it. Its dependencies come from ``node/package-lock.json`` (``npm ci --prefix tests/e2e/node``). The
module's stack has the demo hoster serve an embedding model too, for ``embeddings.create``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from libs.contracts.pricing import cost_of, to_credits
from libs.devstack.stack import DEMO_EMBEDDING_MODEL, DEMO_HOSTER_ID, DEMO_MODEL, Stack
from tests.e2e.conftest import build_stack

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT_TIMEOUT_S = 45
# The demo hoster's prices (micro-credits per million tokens) and the router's default fee.
INPUT_PRICE, OUTPUT_PRICE, FEE_BPS = 500_000, 1_500_000, 1000
EMBEDDING_INPUT_PRICE = 20_000
REPLY_WORDS = 12  # the e2e simulator replies with 12 tokens, one word each
EMBEDDING_DIMENSIONS = 32  # the simulator's default width


def run_node(script: str, args: list[str], packages: tuple[str, ...] = ("openai",),
             timeout_s: float = SCRIPT_TIMEOUT_S) -> dict[str, Any]:  # fmt: skip
    """Run ``script`` of ``tests/e2e/node`` with node and return the JSON report it prints; fail with node's
    stderr if it did not finish, or naming the npm package ``make test`` should have installed."""
    for package in packages:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            pytest.fail(f"the {package} npm package is not installed: run `npm ci --prefix {NODE_DIR}`")
    result = subprocess.run(
        ["node", script, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{script} exited with {result.returncode}:\n{result.stderr}", pytrace=False)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def run_sdk_check(base_url: str, api_key: str, model: str, embedding_model: str) -> dict[str, Any]:
    """Run ``sdk_check.mjs`` and return its report."""
    return run_node("sdk_check.mjs", [base_url, api_key, model, embedding_model])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The e2e stack, its demo hoster also serving ``demo-embedding`` for embeddings."""
    running = build_stack(embedding_model=DEMO_EMBEDDING_MODEL)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def observed(stack: Stack, api_key: str) -> dict[str, Any]:
    """What the npm SDK observed against the module's stack (one node run for every test here)."""
    return run_sdk_check(stack.config.api_base, api_key, DEMO_MODEL, DEMO_EMBEDDING_MODEL)


@pytest.fixture(scope="module")
def python_sdk(stack: Stack, api_key: str) -> openai.OpenAI:
    """The official Python SDK on the same stack, to compare what the two SDKs get for the same request."""
    return openai.OpenAI(base_url=stack.config.api_base, api_key=api_key, max_retries=0)


def expected_cost(prompt_tokens: int, completion_tokens: int) -> float:
    """``usage.cost`` in credits for a usage at the demo hoster's prices plus the platform fee."""
    return to_credits(cost_of(prompt_tokens, completion_tokens, INPUT_PRICE, OUTPUT_PRICE, FEE_BPS).client)


def expected_embedding_cost(prompt_tokens: int) -> float:
    """``usage.cost`` in credits of embedding ``prompt_tokens`` at the demo hoster's price plus the fee."""
    return to_credits(cost_of(prompt_tokens, 0, EMBEDDING_INPUT_PRICE, 0, FEE_BPS).client)


def test_runs_the_pinned_sdk(observed: dict[str, Any]) -> None:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert observed["sdk_version"] == lock["packages"]["node_modules/openai"]["version"]


def test_non_stream_completion_has_content_usage_and_cost(observed: dict[str, Any]) -> None:
    completion = observed["non_stream"]
    assert completion["id"].startswith("chatcmpl-")
    assert completion["object"] == "chat.completion"
    assert completion["model"] == DEMO_MODEL
    assert completion["choices"] == 1
    assert completion["role"] == "assistant"
    assert len(completion["content"].split()) == REPLY_WORDS
    assert completion["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["completion_tokens"] == REPLY_WORDS
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + REPLY_WORDS
    assert usage["cost"] == pytest.approx(expected_cost(usage["prompt_tokens"], REPLY_WORDS))


def test_max_tokens_stops_with_length(observed: dict[str, Any]) -> None:
    completion = observed["max_tokens_4"]
    assert completion["finish_reason"] == "length"
    assert len(completion["content"].split()) == 4
    assert completion["usage"]["completion_tokens"] == 4
    assert completion["usage"]["total_tokens"] == completion["usage"]["prompt_tokens"] + 4


def test_with_response_exposes_the_gateway_headers(observed: dict[str, Any]) -> None:
    completion = observed["non_stream"]
    headers = completion["headers"]
    assert headers["status"] == 200
    assert headers["content_type"] == "application/json"
    assert headers["hoster"] == DEMO_HOSTER_ID
    assert headers["request_id"] == completion["id"]
    assert completion["with_response_request_id"] == completion["id"]
    assert completion["sdk_request_id"] == completion["id"]


def test_as_response_gives_the_raw_answer_and_its_headers(observed: dict[str, Any]) -> None:
    raw = observed["as_response"]
    assert raw["status"] == 200
    assert raw["hoster"] == DEMO_HOSTER_ID
    assert raw["request_id"] == raw["body_id"]
    assert raw["body_id"].startswith("chatcmpl-")
    assert raw["body_object"] == "chat.completion"
    assert raw["body_has_cost"] is True


def test_stream_yields_the_same_text_as_non_stream_and_finishes(observed: dict[str, Any]) -> None:
    stream = observed["stream"]
    assert stream["count"] >= REPLY_WORDS
    assert len(stream["ids"]) == 1
    assert stream["ids"][0].startswith("chatcmpl-")
    assert stream["objects"] == ["chat.completion.chunk"]
    assert stream["models"] == [DEMO_MODEL]
    assert stream["content"] == observed["non_stream"]["content"]
    assert stream["first_role"] == "assistant"
    assert stream["finish_reason"] == "stop"
    assert stream["finish_reasons_before_last"] == 0
    assert stream["last_usage"] is None
    assert stream["chunks_with_usage_before_last"] == 0


def test_stream_response_carries_the_gateway_headers(observed: dict[str, Any]) -> None:
    headers = observed["stream"]["headers"]
    assert headers["status"] == 200
    assert headers["content_type"].startswith("text/event-stream")
    assert headers["hoster"] == DEMO_HOSTER_ID
    assert headers["request_id"] == observed["stream"]["ids"][0]


def test_include_usage_sends_a_final_usage_chunk_with_no_choices(observed: dict[str, Any]) -> None:
    stream = observed["stream_with_usage"]
    assert stream["content"] == observed["non_stream"]["content"]
    assert stream["finish_reason"] == "stop"
    assert stream["last_choices"] == []
    usage = stream["last_usage"]
    assert usage["completion_tokens"] == REPLY_WORDS
    assert usage["total_tokens"] == usage["prompt_tokens"] + REPLY_WORDS
    assert usage["prompt_tokens"] == observed["non_stream"]["usage"]["prompt_tokens"]
    assert usage["cost"] == pytest.approx(expected_cost(usage["prompt_tokens"], REPLY_WORDS))
    assert stream["chunks_with_usage_before_last"] == 0


def test_models_list_and_retrieve(observed: dict[str, Any]) -> None:
    models = observed["models"]
    assert sorted(models["list_ids"]) == sorted([DEMO_MODEL, DEMO_EMBEDDING_MODEL])
    assert models["retrieved_id"] == DEMO_MODEL
    assert models["retrieved_object"] == "model"


@pytest.mark.parametrize("call", ["unknown_model", "unknown_model_retrieve"])
def test_unknown_model_is_the_sdks_not_found_error(observed: dict[str, Any], call: str) -> None:
    error = observed["errors"][call]
    assert error["raised"] is True, error
    assert (error["class"], error["status"], error["code"]) == ("NotFoundError", 404, "model_not_found")
    assert error["type"] == "invalid_request_error"


def test_unknown_key_is_the_sdks_authentication_error(observed: dict[str, Any]) -> None:
    error = observed["errors"]["bad_key"]
    assert error["raised"] is True, error
    assert (error["class"], error["status"], error["code"]) == ("AuthenticationError", 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"


def test_out_of_range_temperature_is_a_bad_request_naming_the_param(observed: dict[str, Any]) -> None:
    error = observed["errors"]["temperature_3"]
    assert error["raised"] is True, error
    assert (error["class"], error["status"], error["param"]) == ("BadRequestError", 400, "temperature")
    assert error["type"] == "invalid_request_error"
    assert set(error["body"]) == {"message", "type", "param", "code"}


def test_embeddings_are_asked_for_as_base64_and_decoded_to_unit_vectors(observed: dict[str, Any]) -> None:
    embeddings = observed["embeddings"]
    # The SDK's default: base64 on the wire for the calls without encoding_format, "float" when asked.
    assert embeddings["encodings_sent"] == ["base64", "base64", "float"]
    for name, count in (("of_string", 1), ("of_list", 2), ("as_floats", 2)):
        response = embeddings[name]
        assert response["object"] == "list"
        assert response["model"] == DEMO_EMBEDDING_MODEL
        assert response["indexes"] == list(range(count))
        assert response["objects"] == ["embedding"]
        assert response["is_array"] == [True] * count
        for vector in response["vectors"]:
            assert len(vector) == EMBEDDING_DIMENSIONS
            assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)


def test_embeddings_decoded_by_the_npm_sdk_equal_the_floats_the_python_sdk_gets(
    observed: dict[str, Any], python_sdk: openai.OpenAI
) -> None:
    embeddings = observed["embeddings"]
    floats = python_sdk.embeddings.create(
        model=DEMO_EMBEDDING_MODEL, input=embeddings["inputs"], encoding_format="float"
    )
    expected = [d.embedding for d in floats.data]
    # float32 on the wire as base64, so equal to the floats within float32's precision.
    for decoded, wanted in zip(embeddings["of_list"]["vectors"], expected, strict=True):
        assert decoded == pytest.approx(wanted, abs=1e-6)
    assert embeddings["of_string"]["vectors"][0] == pytest.approx(expected[0], abs=1e-6)
    # Asked for as floats, the npm SDK passes the JSON numbers through untouched.
    assert embeddings["as_floats"]["vectors"] == expected
    assert expected[0] != pytest.approx(expected[1], abs=1e-3)  # two inputs, two different vectors


def test_embeddings_are_billed_per_input_token(observed: dict[str, Any]) -> None:
    for name in ("of_string", "of_list"):
        usage = observed["embeddings"][name]["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"]
        assert usage["cost"] == pytest.approx(expected_embedding_cost(usage["prompt_tokens"]))
    of_string, of_list = (observed["embeddings"][name]["usage"]["prompt_tokens"] for name in ("of_string", "of_list"))
    assert of_list > of_string


def test_text_completion_through_the_npm_sdk(observed: dict[str, Any], python_sdk: openai.OpenAI) -> None:
    text = observed["text_completion"]
    completion = text["non_stream"]
    assert completion["id"]  # the gateway's request id (``chatcmpl-``, where OpenAI's say ``cmpl-``)
    assert completion["object"] == "text_completion"
    assert completion["model"] == DEMO_MODEL
    assert completion["choices"] == 1
    assert len(completion["text"].split()) == text["max_tokens"]
    assert completion["finish_reason"] == "length"
    usage = completion["usage"]
    assert usage["completion_tokens"] == text["max_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + text["max_tokens"]
    assert usage["cost"] == pytest.approx(expected_cost(usage["prompt_tokens"], text["max_tokens"]))
    # The simulated model answers a prompt the same way whichever SDK asks.
    same = python_sdk.completions.create(model=DEMO_MODEL, prompt=text["prompt"], max_tokens=text["max_tokens"])
    assert same.choices[0].text == completion["text"]


def test_text_completion_stream_with_include_usage_through_the_npm_sdk(observed: dict[str, Any]) -> None:
    text = observed["text_completion"]
    stream = text["stream"]
    assert len(stream["ids"]) == 1
    assert stream["ids"][0] not in ("", text["non_stream"]["id"])
    assert stream["objects"] == ["text_completion"]
    assert stream["models"] == [DEMO_MODEL]
    assert len(stream["pieces"]) > 1  # streamed in pieces, not one chunk
    assert "".join(stream["pieces"]) == text["non_stream"]["text"]
    assert stream["finish_reason"] == "length"
    assert stream["finish_reasons_before_last"] == 0
    assert stream["last_choices"] == []
    assert stream["chunks_with_usage_before_last"] == 0
    usage = stream["last_usage"]
    assert usage["completion_tokens"] == text["max_tokens"]
    assert usage["prompt_tokens"] == text["non_stream"]["usage"]["prompt_tokens"]
    assert usage["cost"] == pytest.approx(text["non_stream"]["usage"]["cost"])
