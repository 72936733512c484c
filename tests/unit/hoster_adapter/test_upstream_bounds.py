"""What a hostile upstream can make the adapter hold: bounded lines, choices and content."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from libs.contracts.common import Usage
from services.hoster_adapter.service import CompletionAssembler, SseDataLines, UpstreamFailure
from services.hoster_adapter.upstream import _error_detail
from tests.unit.hoster_adapter.test_attempt_logic import chunk, dispatch


def test_splitter_yields_data_payloads_across_reads_of_any_size() -> None:
    splitter = SseDataLines(max_line_bytes=1024)
    stream = b'data: {"a": 1}\n\n: comment\ndata: [DONE]\n\n'
    payloads = [p for i in range(len(stream)) for p in splitter.feed(stream[i : i + 1])]
    assert payloads == [b'{"a": 1}', b"[DONE]"]


def test_splitter_refuses_a_line_that_never_ends_and_holds_at_most_the_bound() -> None:
    splitter = SseDataLines(max_line_bytes=4096)
    assert splitter.feed(b"data: " + b"x" * 4000) == []
    with pytest.raises(UpstreamFailure, match="line_too_long"):
        splitter.feed(b"x" * 1000)
    assert splitter._rest == b""


def test_splitter_refuses_a_long_line_that_arrives_whole_in_one_read() -> None:
    with pytest.raises(UpstreamFailure, match="line_too_long"):
        SseDataLines(max_line_bytes=1024).feed(b"data: " + b"x" * 5000 + b"\n\ndata: [DONE]\n\n")


def test_splitter_takes_a_line_of_exactly_the_bound() -> None:
    line = b"data: " + b"x" * (1024 - 6)
    assert SseDataLines(max_line_bytes=1024).feed(line + b"\n" + line + b"\n") == [b"x" * 1018] * 2


def choices_chunk(indexes: range, content: str = "a") -> dict[str, Any]:
    return {"choices": [{"index": i, "delta": {"content": content}, "finish_reason": None} for i in indexes]}


def test_assembler_refuses_more_choices_than_asked_for() -> None:
    assembler = CompletionAssembler(max_choices=2)
    assembler.add(choices_chunk(range(2)))
    with pytest.raises(UpstreamFailure, match="too_many_choices"):
        assembler.add(choices_chunk(range(2, 3)))


@pytest.mark.parametrize("index", [-1, "0", 1.5, [0], 10**30])
def test_assembler_refuses_a_choice_index_that_is_not_a_small_int(index: Any) -> None:
    with pytest.raises(UpstreamFailure, match="too_many_choices"):
        CompletionAssembler(max_choices=4).add({"choices": [{"index": index, "delta": {"content": "a"}}]})


def test_assembler_refuses_content_past_its_byte_budget() -> None:
    assembler = CompletionAssembler(max_bytes=10_000)
    for _ in range(9):
        assembler.add(chunk("x" * 1000))
    with pytest.raises(UpstreamFailure, match="completion_too_large"):
        assembler.add(chunk("x" * 1001))


@pytest.mark.parametrize("field", ["reasoning_content", "refusal"])
def test_reasoning_and_refusal_count_against_the_budget(field: str) -> None:
    with pytest.raises(UpstreamFailure, match="completion_too_large"):
        CompletionAssembler(max_bytes=1024).add({"choices": [{"index": 0, "delta": {field: "x" * 2000}}]})


def test_tool_calls_count_against_the_budget_and_their_number_is_capped() -> None:
    def call(index: int, arguments: str) -> dict[str, Any]:
        return {
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}}]
        }

    with pytest.raises(UpstreamFailure, match="completion_too_large"):
        CompletionAssembler(max_bytes=1024).add(call(0, "x" * 2000))
    assembler = CompletionAssembler(max_tool_calls=3)
    for index in range(3):
        assembler.add(call(index, "{}"))
    with pytest.raises(UpstreamFailure, match="too_many_tool_calls"):
        assembler.add(call(3, "{}"))


def test_logprobs_count_against_the_budget() -> None:
    entry = {"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}
    with pytest.raises(UpstreamFailure, match="completion_too_large"):
        CompletionAssembler(max_bytes=1024).add(
            {"choices": [{"index": 0, "delta": {}, "logprobs": {"content": [entry] * 100}}]}
        )


def test_content_that_is_not_a_string_is_a_malformed_chunk() -> None:
    with pytest.raises(UpstreamFailure, match="invalid_chunk"):
        CompletionAssembler().add({"choices": [{"index": 0, "delta": {"content": ["a"]}}]})


def test_a_bounded_answer_still_assembles_every_choice_asked_for() -> None:
    assembler = CompletionAssembler(max_choices=3, max_bytes=1024)
    assembler.add(choices_chunk(range(3), "hi"))
    usage = Usage(prompt_tokens=1, completion_tokens=3, total_tokens=4)
    body = orjson.loads(assembler.completion(dispatch(stream=False), usage, None))
    assert [c["message"]["content"] for c in body["choices"]] == ["hi", "hi", "hi"]


def test_error_detail_is_the_envelopes_message_or_the_bodys_first_characters() -> None:
    envelope = orjson.dumps({"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}})
    assert _error_detail(envelope) == "Invalid value for 'temperature'"
    assert _error_detail(b'{"error": {"message": "' + b"x" * 5000) == '{"error": {"message": "' + "x" * 277
    assert _error_detail(b"\xff\xfe bad gateway") == "\ufffd\ufffd bad gateway"
