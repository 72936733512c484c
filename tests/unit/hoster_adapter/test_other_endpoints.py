"""What the adapter makes of a hoster's embeddings and text completions, hostile ones included."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from libs.contracts.common import COMPLETIONS, EMBEDDINGS, MAX_COUNT
from libs.contracts.pricing import input_count
from libs.contracts.routing import AttemptDispatch
from services.hoster_adapter.profiles import PROFILES
from services.hoster_adapter.service import (
    ChunkRewriter,
    StreamTally,
    TextAssembler,
    UpstreamFailure,
    embeddings_body,
)


def dispatch(body: dict[str, Any], endpoint: Any = EMBEDDINGS) -> AttemptDispatch:
    return AttemptDispatch(
        request_id="req", attempt=1, router_id="r", reply_subject="s", hoster_id="h", model="public",
        upstream_model="upstream", stream=False, include_usage=False, created=1, input_price=1_000_000,
        output_price=0, body=body, max_tokens=0, endpoint=endpoint,
    )  # fmt: skip


def answer(vectors: list[Any], prompt_tokens: Any = 3) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": "upstream",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@pytest.mark.parametrize(
    ("value", "count"), [("a", 1), (["a", "b"], 2), ([1, 2, 3], 1), ([[1], [2, 3]], 2)]
)  # fmt: skip
def test_one_vector_per_input_in_each_of_openais_four_forms(value: Any, count: int) -> None:
    assert input_count(value) == count


def test_the_clients_body_has_our_model_name_vectors_in_order_and_priced_usage() -> None:
    upstream = answer([[0.5, 0.5], [1, 0]])
    upstream["data"].reverse()  # indexes say where each belongs
    tally = StreamTally()
    body = orjson.loads(embeddings_body(upstream, dispatch({"input": ["a", "b"]}), tally))
    assert body["model"] == "public"
    assert [d["embedding"] for d in body["data"]] == [[0.5, 0.5], [1, 0]]
    assert body["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 3,
        "cost": 0.000003,
        "cost_details": {"upstream_inference_cost": 0.000003},
    }
    assert tally.usage({}).prompt_tokens == 3


def test_base64_is_little_endian_float32_as_openai_sends_it() -> None:
    body = orjson.loads(
        embeddings_body(answer([[0.25, -1.5]]), dispatch({"input": "a", "encoding_format": "base64"}), StreamTally())
    )
    assert struct.unpack("<2f", base64.b64decode(body["data"][0]["embedding"])) == (0.25, -1.5)


@pytest.mark.parametrize(
    ("upstream", "body", "problem"),
    [
        (answer([[1.0]]), {"input": ["a", "b"]}, "1 vectors for 2 inputs"),
        (answer([[1.0], [1.0], [1.0]]), {"input": ["a", "b"]}, "3 vectors for 2 inputs"),
        ({"data": "nope"}, {"input": "a"}, "no vectors"),
        (answer([[1.0, 2.0], [1.0]]), {"input": ["a", "b"]}, "expected 2"),
        (answer([[1.0, 2.0]]), {"input": "a", "dimensions": 3}, "expected 3"),
        (answer([["x"]]), {"input": "a"}, "finite numbers"),
        (answer([[True]]), {"input": "a"}, "finite numbers"),
        (answer([[]]), {"input": "a"}, "not a list"),
        (answer(["AAAA"]), {"input": "a"}, "not a list"),
        ({"data": [{"index": 0, "embedding": [1.0]}] * 2}, {"input": ["a", "b"]}, "index 0"),
        ({"data": [{"index": 7, "embedding": [1.0]}]}, {"input": "a"}, "index 7"),
        (answer([[1e39]]), {"input": "a", "encoding_format": "base64"}, "float32"),
    ],
)  # fmt: skip
def test_a_hosters_wrong_embeddings_never_reach_the_client(upstream: Any, body: dict[str, Any], problem: str) -> None:
    with pytest.raises(UpstreamFailure, match=problem):
        embeddings_body(upstream, dispatch(body), StreamTally())


def test_non_finite_numbers_are_refused() -> None:
    # orjson cannot parse NaN, but a hoster's JSON parsed elsewhere could carry one.
    with pytest.raises(UpstreamFailure, match="finite"):
        embeddings_body(answer([[float("nan")]]), dispatch({"input": "a"}), StreamTally())


@pytest.mark.parametrize("reported", [-5, "12", 1.5, None, 10**12])
def test_usage_that_is_not_a_count_is_estimated_or_left_to_the_routers_bound(reported: Any) -> None:
    tally = StreamTally()
    body = orjson.loads(embeddings_body(answer([[1.0]], reported), dispatch({"input": "x" * 40}), tally))
    usage = tally.usage({"input": "x" * 40})
    if reported == 10**12:
        # A count, held to PostgreSQL's integers as it is read; the router then holds it to the request's bound.
        assert usage.prompt_tokens == MAX_COUNT
    else:
        assert body["usage"]["estimated"] is True
        assert usage.prompt_tokens == 10


def test_embedding_requests_carry_only_what_an_embedding_server_takes() -> None:
    body = {"model": "public", "input": ["a"], "dimensions": 8, "encoding_format": "base64", "temperature": 1}
    prepared, dropped = PROFILES["ollama"].prepare(body, "upstream", 0, EMBEDDINGS)
    assert prepared == {"model": "upstream", "input": ["a"], "dimensions": 8, "encoding_format": "float"}
    assert dropped == ["temperature"]
    # A server that takes anything (the openai and vllm profiles) gets everything, vectors still as floats.
    passed, none = PROFILES["vllm"].prepare(body, "upstream", 0, EMBEDDINGS)
    assert passed == body | {"model": "upstream", "encoding_format": "float"}
    assert none == []


def test_text_completions_pass_their_own_parameters_and_the_reserved_limit_as_max_tokens() -> None:
    body = {"model": "public", "prompt": "hi", "echo": True, "logprobs": 2, "suffix": "!", "max_tokens": 9}
    prepared, dropped = PROFILES["naga"].prepare(body, "upstream", 9, COMPLETIONS)
    assert prepared["max_tokens"] == 9
    assert "max_completion_tokens" not in prepared
    assert {k: prepared[k] for k in ("prompt", "echo", "logprobs", "suffix")} == {
        "prompt": "hi", "echo": True, "logprobs": 2, "suffix": "!"
    }  # fmt: skip
    assert dropped == []


def logprobs(tokens: list[str], logprob: float, offset: int) -> dict[str, Any]:
    return {"tokens": tokens, "token_logprobs": [logprob], "top_logprobs": [{}], "text_offset": [offset]}


def text_chunk(index: int, text: str, lp: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
    return {"id": "up", "object": "text_completion", "choices": [choice]}


def test_text_chunks_are_rewritten_and_assembled() -> None:
    d = dispatch({"prompt": "hi", "n": 2}, COMPLETIONS)
    chunks = [
        text_chunk(0, "Hel", logprobs(["Hel"], -0.1, 0)),
        text_chunk(1, "Yo", None, "stop"),
        text_chunk(0, "lo", logprobs(["lo"], -0.2, 3), "length"),
    ]
    rewritten = orjson.loads(ChunkRewriter(d).rewrite(dict(chunks[0])) or b"")
    assert (rewritten["id"], rewritten["object"], rewritten["model"]) == ("req", "text_completion", "public")
    assembler = TextAssembler(max_choices=2)
    tally = StreamTally()
    for c in chunks:
        tally.observe(c)
        assembler.add(c)
    assert tally.content_chunks == 3
    body = orjson.loads(assembler.completion(d, tally.usage(d.body), None))
    assert [(c["text"], c["finish_reason"]) for c in body["choices"]] == [("Hello", "length"), ("Yo", "stop")]
    assert body["choices"][0]["logprobs"]["tokens"] == ["Hel", "lo"]
    assert body["choices"][1]["logprobs"] is None
    assert body["object"] == "text_completion"


def test_text_assembler_holds_a_hoster_to_its_bounds() -> None:
    with pytest.raises(UpstreamFailure, match="too_many_choices"):
        TextAssembler(max_choices=1).add({"choices": [{"index": 1, "text": "x"}]})
    with pytest.raises(UpstreamFailure, match="completion_too_large"):
        TextAssembler(max_bytes=10).add({"choices": [{"index": 0, "text": "x" * 11}]})
    with pytest.raises(UpstreamFailure, match="invalid_chunk"):
        TextAssembler().add({"choices": [{"index": 0, "text": 5}]})
