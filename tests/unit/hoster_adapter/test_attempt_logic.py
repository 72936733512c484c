from __future__ import annotations

from typing import Any

import orjson

from libs.contracts.routing import AttemptDispatch
from services.hoster_adapter.service import ChunkRewriter, CompletionAssembler, StreamTally


def dispatch(stream: bool = True, include_usage: bool = False) -> AttemptDispatch:
    return AttemptDispatch(
        request_id="chatcmpl-gw",
        attempt=1,
        router_id="r",
        reply_subject="ingress.reply.i.chatcmpl-gw",
        hoster_id="h",
        model="public-name",
        upstream_model="upstream-name",
        stream=stream,
        include_usage=include_usage,
        created=1234,
        input_price=1,
        output_price=2,
        body={"messages": [{"role": "user", "content": "x" * 40}]},
        max_tokens=4096,
    )


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-name",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_rewriter_puts_the_gateway_id_model_and_created_on_every_chunk() -> None:
    out = ChunkRewriter(dispatch()).rewrite(chunk("hi"))
    assert out is not None
    parsed = orjson.loads(out)
    assert (parsed["id"], parsed["model"], parsed["created"]) == ("chatcmpl-gw", "public-name", 1234)
    assert parsed["choices"][0]["delta"] == {"content": "hi"}


def test_usage_chunk_is_dropped_unless_the_client_asked_for_it() -> None:
    usage_only = {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    assert ChunkRewriter(dispatch()).rewrite(dict(usage_only)) is None
    kept = ChunkRewriter(dispatch(include_usage=True)).rewrite(dict(usage_only))
    assert kept is not None
    assert orjson.loads(kept)["usage"]["completion_tokens"] == 2
    stripped = ChunkRewriter(dispatch()).rewrite(chunk("a", usage=None))
    assert stripped is not None
    assert "usage" not in orjson.loads(stripped)


def test_the_usage_chunk_passes_the_upstreams_details_held_to_their_counts_and_nothing_else() -> None:
    reported = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 50, "audio_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": -2},
        "cost": 99.0,
        "tracking": "https://hoster.example/pixel",
    }
    out = ChunkRewriter(dispatch(include_usage=True)).rewrite({"id": "x", "choices": [], "usage": reported})
    assert out is not None
    usage = orjson.loads(out)["usage"]
    assert usage == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 0},
        # 10 x 1 + 4 x 2 micro-credits per million tokens, rounded up to one micro-credit; no fee set.
        "cost": 1e-06,
        "cost_details": {"upstream_inference_cost": 1e-06},
    }


def test_a_non_stream_answer_carries_the_reported_details_an_estimate_none() -> None:
    reported = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    tally = StreamTally()
    tally.observe(chunk("hi", "stop"))
    tally.observe({"choices": [], "usage": reported})
    assembler = CompletionAssembler()
    assembler.add(chunk("hi", "stop"))
    body = orjson.loads(assembler.completion(dispatch(stream=False), tally.usage({}), None, tally.reported_usage))
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    estimated = orjson.loads(assembler.completion(dispatch(stream=False), StreamTally().usage({}), None, reported))
    assert estimated["usage"]["estimated"] is True
    assert "prompt_tokens_details" not in estimated["usage"]


def test_tally_prefers_reported_usage_and_estimates_otherwise() -> None:
    reported = StreamTally()
    for c in (
        chunk("a"),
        chunk("b", "stop"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
    ):
        reported.observe(c)
    usage = reported.usage({})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.estimated) == (
        7,
        2,
        9,
        False,
    )
    assert reported.finish_reason == "stop"

    silent = StreamTally()
    for c in (chunk("a"), chunk("b"), chunk("c"), chunk(None, "stop")):
        silent.observe(c)
    estimate = silent.usage(dispatch().body)
    assert (estimate.prompt_tokens, estimate.completion_tokens, estimate.estimated) == (10, 3, True)


def test_a_stream_cut_short_is_billed_for_the_tokens_sent() -> None:
    tally = StreamTally()
    tally.observe(chunk("a"))
    tally.observe(chunk("b"))
    usage = tally.usage(dispatch().body, completion_tokens=tally.content_chunks)
    assert usage.completion_tokens == 2
    assert usage.estimated


def test_assembler_merges_content_tool_calls_and_choices() -> None:
    assembler = CompletionAssembler()
    assembler.add(chunk("Hel"))
    assembler.add(chunk("lo", "stop"))
    calls = [
        {
            "index": 1,
            "delta": {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"ci'},
                    }
                ]
            },
        },
        {
            "index": 1,
            "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]},
            "finish_reason": "tool_calls",
        },
    ]
    for c in calls:
        assembler.add({"choices": [c]})
    from libs.contracts.common import Usage

    body = orjson.loads(
        assembler.completion(dispatch(stream=False), Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3), "fp")
    )
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-gw"
    assert body["model"] == "public-name"
    first, second = body["choices"]
    assert first["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert first["finish_reason"] == "stop"
    assert second["message"]["content"] is None
    assert second["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert second["finish_reason"] == "tool_calls"
    # Prices 1 and 2 micro-credits per million tokens: 5 millionths of a micro-credit, rounded up to one.
    assert body["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cost": 1e-06,
        "cost_details": {"upstream_inference_cost": 1e-06},
    }
    assert body["system_fingerprint"] == "fp"


def test_sse_data_lines_survive_any_read_boundaries() -> None:
    from services.hoster_adapter.service import SseDataLines

    raw = b'data: {"a":1}\r\n\r\n: keepalive comment\n\nevent: x\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    for size in (1, 2, 5, 7, len(raw)):
        splitter = SseDataLines()
        payloads = []
        for i in range(0, len(raw), size):
            payloads += splitter.feed(raw[i : i + size])
        assert payloads == [b'{"a":1}', b'{"b":2}', b"[DONE]"]
