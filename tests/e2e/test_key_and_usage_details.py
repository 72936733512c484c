"""OpenRouter's ``GET /v1/key`` and the usage details upstreams report, through the public API of a real
stack (simulated hoster, real NATS and PostgreSQL), read with curl-like HTTP and the official SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from libs.contracts.pricing import cost_of
from libs.devstack.stack import DEMO_MODEL, Stack
from tests.openai_schema import openai_validator

pytestmark = pytest.mark.e2e

# The demo hoster's prices (micro-credits per million tokens) and the router's default fee.
INPUT_PRICE, OUTPUT_PRICE, FEE_BPS = 500_000, 1_500_000, 1000
MESSAGES: list[Any] = [{"role": "user", "content": "x" * 400}]  # 100 prompt tokens, as the simulator counts


def get_key(stack: Stack, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.get(f"{stack.config.api_base}/key", headers=headers, timeout=10)


def key_data(stack: Stack, key: str) -> dict[str, Any]:
    response = get_key(stack, key)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def key_data_when(stack: Stack, key: str, usage: float, timeout_s: float = 20) -> dict[str, Any]:
    """The key's data once its settled usage reached ``usage`` credits (settlement is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = key_data(stack, key)
        if data["usage"] == pytest.approx(usage) or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def test_the_key_without_a_valid_key_is_a_401_in_the_openai_envelope(stack: Stack) -> None:
    for key in (None, "not-a-key", "ngk_" + "z" * 43):
        response = get_key(stack, key)
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_key_shows_its_limits_spend_and_what_remains_as_requests_are_made(stack: Stack) -> None:
    account_id, key = stack.create_account(credits="5", rpm=100, tpm=50_000)
    fresh = key_data(stack, key)
    assert fresh["label"] == key[:8] + "…"
    assert (fresh["usage"], fresh["usage_daily"], fresh["limit"], fresh["limit_reset"]) == (0, 0, None, None)
    assert fresh["limit_remaining"] == pytest.approx(5)
    assert fresh["rate_limit"] == {"requests": 100, "tokens": 50_000, "interval": "1m"}
    assert fresh["is_free_tier"] is False

    spent = 0.0
    with openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0, timeout=30) as client:
        for _ in range(2):
            completion = client.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, max_tokens=10)
            assert completion.usage is not None
            assert completion.usage.model_extra is not None
            spent += completion.usage.model_extra["cost"]
    assert spent > 0
    used = key_data_when(stack, key, spent)
    assert used["usage"] == pytest.approx(spent)
    assert used["usage_daily"] == used["usage_weekly"] == used["usage_monthly"] == pytest.approx(spent)
    assert used["limit_remaining"] == pytest.approx(5 - spent)

    # A daily cap is the key's limit, resetting daily; what remains is what is left of it today.
    stack.computeshare("account", "set-limits", account_id, "--daily-cap", "1")
    capped = key_data(stack, key)
    assert (capped["limit"], capped["limit_reset"]) == (1, "daily")
    assert capped["limit_remaining"] == pytest.approx(1 - spent)

    # Another key of the same account sees the account's money but only its own spend.
    sibling = stack.computeshare("key", "create", account_id)["key"]
    other = key_data(stack, sibling)
    assert other["usage"] == 0
    assert other["limit_remaining"] == pytest.approx(1 - spent)


def test_a_keys_tokens_per_minute_count_every_choice_and_prompt_a_request_asks_for(stack: Stack) -> None:
    """A key with a limit of 1,000 tokens a minute: one choice of 100 tokens fits, sixteen (``n``) or four
    prompts of 300 do not, however short the prompt; the refusal is OpenAI's 429 and nothing is generated."""
    _, key = stack.create_account(credits="5", tpm=1000)
    auth = {"authorization": f"Bearer {key}"}
    base = stack.config.api_base
    chat = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    assert httpx.post(f"{base}/chat/completions", json=chat, headers=auth, timeout=30).status_code == 200
    prompts = {"model": DEMO_MODEL, "prompt": ["a", "b", "c", "d"], "max_tokens": 300}
    for path, body in (("chat/completions", chat | {"n": 16}), ("completions", prompts)):
        refused = httpx.post(f"{base}/{path}", json=body, headers=auth, timeout=30)
        assert refused.status_code == 429, (path, refused.text)
        assert "Request too large" in refused.json()["error"]["message"]


def reasoned(**simulator: Any) -> dict[str, Any]:
    """A request whose simulated hoster thinks 3 tokens and reports the given usage details."""
    return {
        "model": DEMO_MODEL,
        "messages": MESSAGES,
        "max_tokens": 10,
        "simulator": {"reasoning_tokens": 3, **simulator},
    }


def usages(stack: Stack, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The usage of ``body`` answered whole and streamed (``include_usage``), each body and chunk validated
    against OpenAI's schemas."""
    auth = {"authorization": f"Bearer {key}"}
    whole = httpx.post(f"{stack.config.api_base}/chat/completions", json=body, headers=auth, timeout=30)
    assert whole.status_code == 200, whole.text
    openai_validator("CreateChatCompletionResponse").validate(whole.json())
    streamed = body | {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", f"{stack.config.api_base}/chat/completions", json=streamed, headers=auth, timeout=30
    ) as r:
        lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    chunks = [httpx.Response(200, content=line).json() for line in lines[:-1]]
    validator = openai_validator("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        validator.validate(chunk)
    return [whole.json()["usage"], chunks[-1]["usage"]]


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.create_account(credits="100")[1]


@pytest.fixture
def sdk(stack: Stack, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0, timeout=30) as client:
        yield client


def test_cached_and_reasoning_tokens_and_the_hosters_cost_reach_the_client(stack: Stack, key: str) -> None:
    for usage in usages(stack, key, reasoned(cached_tokens=60)):
        assert usage["prompt_tokens"] == 100
        assert usage["prompt_tokens_details"] == {"cached_tokens": 60}
        assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}
        cost = cost_of(usage["prompt_tokens"], usage["completion_tokens"], INPUT_PRICE, OUTPUT_PRICE, FEE_BPS)
        assert usage["cost"] == pytest.approx(cost.client / 1e6)
        assert usage["cost_details"] == {"upstream_inference_cost": pytest.approx(cost.hoster / 1e6)}
        assert usage["cost_details"]["upstream_inference_cost"] < usage["cost"]


@pytest.mark.parametrize(("reported", "shown"), [(10**9, 100), (-5, 0)])
def test_a_hosters_cached_tokens_past_the_prompt_or_below_zero_are_held_to_it(
    stack: Stack, key: str, reported: int, shown: int
) -> None:
    for usage in usages(stack, key, reasoned(cached_tokens=reported)):
        assert usage["prompt_tokens_details"] == {"cached_tokens": shown}
        assert usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]


def test_the_official_sdk_reads_the_details(sdk: openai.OpenAI) -> None:
    extra = {"simulator": {"reasoning_tokens": 3, "cached_tokens": 40}}
    completion = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, max_tokens=10, extra_body=extra)
    chunks = list(
        sdk.chat.completions.create(
            model=DEMO_MODEL,
            messages=MESSAGES,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
    )
    for usage in (completion.usage, chunks[-1].usage):
        assert usage is not None
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 40
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == 3
        assert usage.model_extra is not None
        assert usage.model_extra["cost_details"]["upstream_inference_cost"] > 0
