"""What llama-cpp-python's server does with what the ``llamacpp`` profile sends it, asked directly (no gateway):
the facts the profile is built on, so a new release that changes them fails here first."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.devstack.engine import LlamaCppSpec, start_llamacpp
from libs.devstack.processes import free_port
from libs.devstack.tinymodel import tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppSpec]:
    """The server on two tiny models of other seeds (one tokenizer), named ``tiny`` and ``tiny-2``."""
    spec = LlamaCppSpec("llamacpp", free_port(), {"tiny": tiny_model(0), "tiny-2": tiny_model(1)})
    workdir = tmp_path_factory.mktemp("engine")
    process = start_llamacpp(spec, workdir, dict(os.environ), workdir / "llamacpp.log")
    yield spec
    process.stop()


def chat(engine: LlamaCppSpec, **body: Any) -> httpx.Response:
    return httpx.post(f"{engine.base_url}/chat/completions", json=body, timeout=30)


def streamed(engine: LlamaCppSpec, path: str, **body: Any) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{engine.base_url}/{path}", json=body | {"stream": True}, timeout=30) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


MESSAGES = [{"role": "user", "content": "Tell me about the lighthouse."}]


def test_it_serves_its_models_by_alias_with_the_ggufs_chat_template(engine: LlamaCppSpec) -> None:
    models = httpx.get(f"{engine.base_url}/models").json()
    assert sorted(m["id"] for m in models["data"]) == ["tiny", "tiny-2"]
    answers = [chat(engine, model=name, messages=MESSAGES, max_tokens=8, seed=1).json() for name in ("tiny", "tiny-2")]
    assert all(answer["choices"][0]["message"]["content"] for answer in answers)
    # Other weights, other words: the second model is not the first under another name.
    assert answers[0]["choices"][0]["message"]["content"] != answers[1]["choices"][0]["message"]["content"]
    # <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|><|start_header_id|>assistant...
    tokenizer = engine.models["tiny"].tokenizer()
    expected = (
        1 + 1 + len(tokenizer.encode("user").ids) + 1 + len(tokenizer.encode("\n\n" + MESSAGES[0]["content"]).ids)
    )
    expected += 1 + 1 + len(tokenizer.encode("assistant").ids) + 1 + len(tokenizer.encode("\n\n").ids)
    assert answers[0]["usage"]["prompt_tokens"] == expected


@pytest.mark.parametrize("path", ["chat/completions", "completions"])
def test_its_streams_carry_no_usage_even_when_asked_and_its_whole_answers_do(engine: LlamaCppSpec, path: str) -> None:
    shape: dict[str, Any] = {"messages": MESSAGES} if path == "chat/completions" else {"prompt": "The river"}
    chunks = streamed(engine, path, model="tiny", max_tokens=6, seed=2, stream_options={"include_usage": True},
                      **shape)  # fmt: skip
    assert chunks
    assert all(chunk.get("usage") is None for chunk in chunks)
    whole = httpx.post(f"{engine.base_url}/{path}", json={"model": "tiny", "max_tokens": 6, "seed": 2, **shape})
    assert whole.json()["usage"]["completion_tokens"] == 6


def test_it_makes_one_choice_whatever_n_asks(engine: LlamaCppSpec) -> None:
    answer = chat(engine, model="tiny", messages=MESSAGES, max_tokens=4, n=2).json()
    assert len(answer["choices"]) == 1


def test_it_refuses_null_content_and_the_developer_role_with_a_500(engine: LlamaCppSpec) -> None:
    # Why the profile sends plain messages (services.hoster_adapter.profiles.plain_messages).
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with_null = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert chat(engine, model="tiny", messages=with_null, max_tokens=2).status_code == 500
    developer = [{"role": "developer", "content": "Be brief."}, *MESSAGES]
    assert chat(engine, model="tiny", messages=developer, max_tokens=2).status_code == 500
    without_null = [*MESSAGES, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1",
                                                                              "content": "ok"}]  # fmt: skip
    assert chat(engine, model="tiny", messages=without_null, max_tokens=2).status_code == 200
