"""The README's curl usage, through the real ``curl`` binary against the whole stack."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from libs.devstack.stack import DEMO_HOSTER_ID, DEMO_MODEL, Stack

pytestmark = pytest.mark.e2e

CURL_TIMEOUT_S = 30
REPLY_WORDS = 12  # the e2e simulator replies with 12 tokens, one word each
STATUS_MARK = "\n<curl-status>"


@dataclass
class CurlAnswer:
    """What curl printed: the HTTP status, the header lines (with ``-i``) and the body."""

    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def curl(*args: str) -> CurlAnswer:
    """Run ``curl -sS <args>`` and split its output; fail with curl's stderr when curl itself failed.

    With ``-i`` in ``args`` the response's header block is parsed into lower-cased ``headers``.
    """
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(CURL_TIMEOUT_S), "--write-out", f"{STATUS_MARK}%{{http_code}}", *args],
        capture_output=True,  # bytes: text mode would turn the header block's CRLFs into LFs
        timeout=CURL_TIMEOUT_S + 5,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"curl exited with {result.returncode}: {result.stderr.decode()}", pytrace=False)
    output, _, status = result.stdout.decode().rpartition(STATUS_MARK)
    headers: dict[str, str] = {}
    if "-i" in args:
        head, blank, output = output.partition("\r\n\r\n")
        assert blank, f"no header block in {head!r}"
        status_line, *lines = head.split("\r\n")
        assert status_line.startswith("HTTP/"), status_line
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return CurlAnswer(int(status), headers, output)


def chat_completion(stack: Stack, key: str | None, *extra: str, stream: bool = False) -> CurlAnswer:
    """``POST /v1/chat/completions`` the way the README shows it (``key=None`` sends no Authorization)."""
    body = {
        "model": DEMO_MODEL,
        "messages": [{"role": "user", "content": "Write a haiku about GPUs"}],
        **({"stream": True} if stream else {}),
    }
    auth = ["-H", f"Authorization: Bearer {key}"] if key is not None else []
    return curl(
        f"{stack.config.api_base}/chat/completions",
        *extra,
        *auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(body),
    )


def sse_data(body: str) -> list[str]:
    """The payloads of the ``data:`` lines of an SSE body, in order; any other non-comment line is an error."""
    payloads = []
    for line in body.splitlines():
        if not line or line.startswith(":"):
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payloads.append(line.removeprefix("data: "))
    return payloads


def test_non_stream_returns_a_chat_completion(stack: Stack, api_key: str) -> None:
    answer = chat_completion(stack, api_key)
    assert answer.status == 200, answer.body
    completion = answer.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == DEMO_MODEL
    [choice] = completion["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == REPLY_WORDS
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["completion_tokens"] == REPLY_WORDS
    assert usage["total_tokens"] == usage["prompt_tokens"] + REPLY_WORDS
    assert usage["cost"] > 0


def test_stream_with_no_buffer_sends_chunks_then_done(stack: Stack, api_key: str) -> None:
    whole = chat_completion(stack, api_key).json()["choices"][0]["message"]["content"]
    answer = chat_completion(stack, api_key, "-N", stream=True)
    assert answer.status == 200, answer.body
    *events, done = sse_data(answer.body)
    assert done == "[DONE]"
    chunks = [json.loads(event) for event in events]
    assert len(chunks) >= REPLY_WORDS
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert {chunk["model"] for chunk in chunks} == {DEMO_MODEL}
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_no_authorization_header_is_a_401_in_the_openai_envelope(stack: Stack) -> None:
    answer = chat_completion(stack, None)
    assert answer.status == 401
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "API key" in error["message"]


def test_include_headers_shows_the_request_id_and_hoster(stack: Stack, api_key: str) -> None:
    answer = chat_completion(stack, api_key, "-i")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-request-id"] == answer.json()["id"]
    assert answer.headers["x-computeshare-hoster"] == DEMO_HOSTER_ID
