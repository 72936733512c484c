"""The ingress counts the text it relays and holds the usage the client sees to the request's bounds."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from libs.contracts import frames
from libs.contracts.pricing import UsageBounds, client_usage
from services.ingress.gateway import ReplyStream, UsageGuard, VectorsAsked
from tests.unit.ingress.offers import armed, offer


def chunk(index: int = 0, usage: dict[str, Any] | None = None, **delta: object) -> bytes:
    choices = [{"index": index, "delta": delta}] if delta else []
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, "usage": usage})


def test_text_of_every_kind_is_counted_in_utf8_bytes_over_every_choice() -> None:
    guard = UsageGuard(UsageBounds(1000, 1000), 0, 0, 0)
    guard.take(chunk(content="héllo"))  # 6 bytes
    guard.take(chunk(index=1, reasoning_content="ok"))
    guard.take(chunk(tool_calls=[{"function": {"name": "f", "arguments": '{"a":1}'}}]))
    assert (guard.text_bytes, guard.choices) == (6 + 2 + 1 + 7, 2)


def test_usage_past_the_text_or_the_limits_is_rewritten_and_repriced() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 1_000_000, 1_000_000, 0)
    assert guard.take(chunk(content="abcd")) == chunk(content="abcd")  # no usage: untouched
    # What the adapter writes for a report within the bounds passes as it is, byte for byte.
    honest = chunk(usage=client_usage(10, 3, {}, 1_000_000, 1_000_000, 0))
    assert guard.take(honest) == honest
    fixed = orjson.loads(taken(guard, chunk(usage={"prompt_tokens": 10_000, "completion_tokens": 16_000})))
    assert fixed["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "cost": 0.000105,
        "cost_details": {"upstream_inference_cost": 0.000105},
    }
    negative = orjson.loads(taken(guard, chunk(usage={"prompt_tokens": -1, "completion_tokens": -9})))
    assert negative["usage"]["cost"] == 0


def test_a_frame_of_several_chunks_is_counted_and_bounded_chunk_by_chunk() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 1_000_000, 1_000_000, 0)
    inflated = chunk(usage={"prompt_tokens": 10_000, "completion_tokens": 16_000})
    body = b"\n".join([chunk(content="abcd"), chunk(content="ef"), inflated])
    out = taken(guard, body).split(b"\n")
    assert guard.text_bytes == 6
    assert out[:2] == [chunk(content="abcd"), chunk(content="ef")]
    assert orjson.loads(out[2])["usage"]["completion_tokens"] == 7  # 6 bytes of text + 1 for the choice


def test_the_gateways_cost_replaces_a_hosters_and_its_fee_is_not_the_hosters_share() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 1_000_000, 2_000_000, 1000)
    guard.take(chunk(content="abcdefghij"))
    lied = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "cost": 0, "injected": "<script>"}
    usage = orjson.loads(taken(guard, chunk(usage=lied)))["usage"]
    # 10 x 1 + 4 x 2 = 18 micro-credits to the hoster, plus a 10% fee rounded up: 20.
    assert usage["cost"] == pytest.approx(20e-6)
    assert usage["cost_details"] == {"upstream_inference_cost": pytest.approx(18e-6)}
    assert "injected" not in usage


def usage_of(guard: UsageGuard, **reported: Any) -> dict[str, Any]:
    """The usage the client sees after ``guard`` held ``reported`` (with 10 prompt, 4 completion tokens)."""
    # The stdlib's encoder: it writes integers past 64 bits and NaN, as a hostile hoster may.
    usage = {"prompt_tokens": 10, "completion_tokens": 4, **reported}
    body = json.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage}).encode()
    out: dict[str, Any] = orjson.loads(taken(guard, body))["usage"]
    return out


@pytest.fixture
def guard() -> UsageGuard:
    guarded = UsageGuard(UsageBounds(prompt=100, completion=50), 1_000_000, 1_000_000, 0)
    guarded.take(chunk(content="abcdefghij"))  # 10 bytes of text: up to 11 completion tokens
    return guarded


def test_details_within_their_counts_pass(guard: UsageGuard) -> None:
    usage = usage_of(
        guard, prompt_tokens_details={"cached_tokens": 6}, completion_tokens_details={"reasoning_tokens": 3}
    )
    assert usage["prompt_tokens_details"] == {"cached_tokens": 6}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}


@pytest.mark.parametrize(
    ("cached", "reasoning", "shown"),
    [
        (11, 5, (10, 4)),  # more than the whole: held to it
        (10**18, 10**18, (10, 4)),  # huge
        (10**30, 10**30, (10, 4)),  # past 64 bits (orjson refuses to read it; the guard still does)
        (-3, -1, (0, 0)),  # negative
        (4.0, 2.0, (4, 2)),  # a whole number written as a float
    ],
)
def test_details_past_their_counts_are_held_to_them(
    guard: UsageGuard, cached: Any, reasoning: Any, shown: tuple[int, int]
) -> None:
    usage = usage_of(
        guard,
        prompt_tokens_details={"cached_tokens": cached},
        completion_tokens_details={"reasoning_tokens": reasoning},
    )
    assert (
        usage["prompt_tokens_details"]["cached_tokens"],
        usage["completion_tokens_details"]["reasoning_tokens"],
    ) == (shown)


@pytest.mark.parametrize("value", ["7", 2.5, None, True, [3], {"n": 3}, float("nan")])
def test_a_detail_that_is_not_a_count_is_left_out(guard: UsageGuard, value: Any) -> None:
    usage = usage_of(
        guard,
        prompt_tokens_details={"cached_tokens": value, "audio_tokens": 2},
        completion_tokens_details={"reasoning_tokens": value},
    )
    assert "prompt_tokens_details" not in usage
    assert "completion_tokens_details" not in usage


def test_details_are_held_to_the_counts_after_those_are_bounded(guard: UsageGuard) -> None:
    # 500 completion tokens claimed, 11 possible from the text relayed: 400 reasoning tokens cannot all be.
    usage = usage_of(
        guard,
        completion_tokens=500,
        prompt_tokens=1000,
        prompt_tokens_details={"cached_tokens": 1000},
        completion_tokens_details={"reasoning_tokens": 400},
    )
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (100, 11)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 100}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 11}


@pytest.mark.parametrize("counts", [{"prompt_tokens": "10", "completion_tokens": 4}, {"completion_tokens": [4]}])
def test_counts_that_are_not_numbers_are_not_shown_as_they_came(guard: UsageGuard, counts: dict[str, Any]) -> None:
    usage = orjson.loads(taken(guard, chunk(usage=counts)))["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))


def test_an_embeddings_usage_keeps_without_a_completion_count() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=0), 1_000_000, 0, 0, vectors=VectorsAsked(1, None, "float"))
    usage = client_usage(3, 0, None, 1_000_000, 0, 0)
    del usage["completion_tokens"]
    data = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
    written = orjson.dumps({"object": "list", "data": data, "model": "m", "usage": usage})
    assert guard.take(written) == written
    inflated = orjson.dumps({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 10**6}})
    assert orjson.loads(taken(guard, inflated))["usage"] == {
        "prompt_tokens": 100,
        "total_tokens": 100,
        "cost": 0.0001,
        "cost_details": {"upstream_inference_cost": 0.0001},
    }


def taken(guard: UsageGuard, body: bytes) -> bytes:
    out = guard.take(body)
    assert out is not None
    return out


def test_what_is_not_a_json_object_never_reaches_the_client() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 0, 0, 0)
    assert guard.take(b"not json") is None
    assert guard.take(b"[1, 2]") is None
    assert guard.take(chunk(content="ok") + b"\nnot json") is None  # one bad line spoils the frame


def test_a_carriage_return_cannot_slip_into_the_clients_stream() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 0, 0, 0)
    out = taken(guard, b'{"choices": []}\r\r')
    assert b"\r" not in out
    assert orjson.loads(out) == {"choices": []}


async def test_a_malformed_answer_ends_the_stream_with_an_error_and_stops_the_request() -> None:
    stopped: list[str] = []
    stream = armed(ReplyStream("r", idle_s=1, on_lost=stopped.append))
    stream.guard = UsageGuard(UsageBounds(prompt=100, completion=50), 0, 0, 0)
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 0, chunk(content="ok")))
    stream.put(offer(1), frames.encode(frames.CHUNK, 1, 1, b"<html>oops</html>"))
    assert (await stream.next()).kind == frames.CHUNK
    error = await stream.next()
    assert error.kind == frames.ERROR
    assert orjson.loads(error.body)["code"] == "invalid_hoster_response"
    assert stopped == ["r"]


def test_an_embeddings_answer_must_hold_the_vectors_asked_for() -> None:
    def answer(*vectors: object) -> bytes:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return orjson.dumps({"object": "list", "data": data, "model": "m"})

    floats = UsageGuard(UsageBounds(prompt=100, completion=0), 0, 0, 0, vectors=VectorsAsked(2, None, "float"))
    assert floats.take(answer([0.5, 0.5], [1, 2])) is not None
    assert floats.take(answer([0.5, 0.5])) is None  # one short
    assert floats.take(answer([0.5], [0.5], [0.5])) is None  # one too many
    assert floats.take(answer([0.5], ["x"])) is None  # not numbers
    assert floats.take(answer([0.5], [])) is None
    assert floats.take(answer([0.5, 0.5], "AAAAPw==")) is None  # base64 where floats were asked for
    assert floats.take(answer([0.5, 0.5], [0.5])) is None  # widths differ
    # The ingress reads a body orjson cannot (an integer past 64 bits) with the json module, which takes NaN.
    huge = b'{"object": "list", "n": 99999999999999999999, "data": '
    assert floats.take(huge + b'[{"index": 0, "embedding": [NaN]}, {"index": 1, "embedding": [1.0]}]}') is None
    sized = UsageGuard(UsageBounds(prompt=100, completion=0), 0, 0, 0, vectors=VectorsAsked(1, 2, "float"))
    assert sized.take(answer([0.5, 0.5])) is not None
    assert sized.take(answer([0.5, 0.5, 0.5])) is None  # not the dimensions asked for
    packed = UsageGuard(UsageBounds(prompt=100, completion=0), 0, 0, 0, vectors=VectorsAsked(1, 1, "base64"))
    assert packed.take(answer("AAAAPw==")) is not None  # 0.5 as a little-endian float32
    assert packed.take(answer([0.5])) is None  # floats where base64 was asked for
    assert packed.take(answer("not base64")) is None
    assert packed.take(answer("AAAAPwAAAD8=")) is None  # two numbers, one asked for
    assert packed.take(answer("AADAfw==")) is None  # NaN


def test_text_counts_as_a_text_completions_and_a_text_field_padded_into_chat_counts_for_nothing() -> None:
    padded = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}, "text": "x" * 500}]})
    chat = UsageGuard(UsageBounds(1000, 1000), 0, 0, 0)
    chat.take(padded)
    assert chat.text_bytes == 2  # a hostile hoster's "text" does not buy it 500 billable tokens
    completion = UsageGuard(UsageBounds(1000, 1000), 0, 0, 0, text=True)
    completion.take(orjson.dumps({"object": "text_completion", "choices": [{"index": 0, "text": "héllo"}]}))
    assert completion.text_bytes == 6


def test_a_choice_the_request_did_not_ask_for_counts_for_nothing() -> None:
    """``n: 1``: a hoster numbering 127 more finished choices would add their text and end tokens."""
    guard = UsageGuard(UsageBounds(1000, 1000), 0, 0, 0, max_choices=1)
    guard.count(lambda choices: sum(len(c.content) + c.ended for c in choices), None)
    guard.take(chunk(content="hi"))
    for index in range(1, 128):
        guard.take(orjson.dumps({"choices": [{"index": index, "delta": {"content": "x"}, "finish_reason": "stop"}]}))
    assert (guard.text_bytes, guard.choices, guard.completion_count()) == (2, 1, 2)
