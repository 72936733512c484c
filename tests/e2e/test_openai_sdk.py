"""The official openai SDK against the whole stack, as a user would call it."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import openai
import pytest

from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, Stack

pytestmark = pytest.mark.e2e

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Write a haiku about GPUs"},
]


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.config.api_base, api_key=key, max_retries=0, timeout=30)


async def usage_rows(stack: Stack, request_id: str, timeout_s: float = 10) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await conn.fetch("SELECT * FROM usage_records WHERE request_id = $1", request_id)
            if rows or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_non_stream_answer_has_content_usage_and_is_recorded_by_billing(stack: Stack, api_key: str) -> None:
    raw = client(stack, api_key).chat.completions.with_raw_response.create(model=DEMO_MODEL, messages=MESSAGES)
    completion = raw.parse()
    assert raw.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
    assert completion.id == raw.headers["x-request-id"]
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == DEMO_MODEL
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert len((choice.message.content or "").split()) == 12
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12
    [row] = await usage_rows(stack, completion.id)
    assert row["outcome"] == "succeeded"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (completion.usage.prompt_tokens, 12)


def test_stream_yields_the_same_text_as_non_stream_and_finishes(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    whole = sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES).choices[0].message.content
    chunks = list(sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, stream=True))
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == DEMO_MODEL for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_include_usage_sends_a_final_usage_chunk_with_no_choices(stack: Stack, api_key: str) -> None:
    chunks = list(
        client(stack, api_key).chat.completions.create(
            model=DEMO_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_client_streams_and_completes(stack: Stack, api_key: str) -> None:
    sdk = openai.AsyncOpenAI(base_url=stack.config.api_base, api_key=api_key, max_retries=0)
    completion = await sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, max_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    text = ""
    async for chunk in await sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert len(text.split()) == 12
    await sdk.close()


def test_models_list_and_retrieve(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    models = sdk.models.list()
    assert [m.id for m in models.data] == [DEMO_MODEL]
    assert sdk.models.retrieve(DEMO_MODEL).id == DEMO_MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")


def test_errors_are_raised_as_the_sdks_own_exceptions(stack: Stack, api_key: str) -> None:
    sdk = client(stack, api_key)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as bad_uuid:
        sdk.chat.completions.create(model=DEMO_MODEL, messages=MESSAGES, extra_body={"deny_hosters": ["x"]})
    assert bad_uuid.value.param is not None
    assert bad_uuid.value.param.startswith("deny_hosters")


def test_unknown_route_and_invalid_json_use_the_openai_envelope(stack: Stack, api_key: str) -> None:
    base = stack.config.api_base
    unknown = httpx.get(f"{base}/nothing-here")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    auth = {"authorization": f"Bearer {api_key}"}
    broken = httpx.post(
        f"{base}/chat/completions", content=b"{not json", headers={"content-type": "application/json", **auth}
    )
    assert broken.status_code == 400
    assert set(broken.json()["error"]) == {"message", "type", "param", "code"}


def test_a_body_larger_than_a_nats_message_is_a_413_not_a_crash(stack: Stack, api_key: str) -> None:
    big = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "x" * 900_000}]}
    response = httpx.post(
        f"{stack.config.api_base}/chat/completions", json=big, headers={"authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
