"""The ingress counts the text it relays and holds the usage the client sees to the request's bounds."""

from __future__ import annotations

import orjson

from libs.contracts.pricing import UsageBounds
from services.ingress.gateway import UsageGuard


def chunk(index: int = 0, usage: dict[str, int] | None = None, **delta: object) -> bytes:
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
    honest = chunk(usage={"prompt_tokens": 10, "completion_tokens": 3})
    assert guard.take(honest) == honest
    fixed = orjson.loads(guard.take(chunk(usage={"prompt_tokens": 10_000, "completion_tokens": 16_000})))
    assert fixed["usage"] == {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "cost": 0.000105}
    negative = orjson.loads(guard.take(chunk(usage={"prompt_tokens": -1, "completion_tokens": -9})))
    assert negative["usage"]["cost"] == 0


def test_a_frame_of_several_chunks_is_counted_and_bounded_chunk_by_chunk() -> None:
    guard = UsageGuard(UsageBounds(prompt=100, completion=50), 1_000_000, 1_000_000, 0)
    inflated = chunk(usage={"prompt_tokens": 10_000, "completion_tokens": 16_000})
    body = b"\n".join([chunk(content="abcd"), chunk(content="ef"), inflated])
    out = guard.take(body).split(b"\n")
    assert guard.text_bytes == 6
    assert out[:2] == [chunk(content="abcd"), chunk(content="ef")]
    assert orjson.loads(out[2])["usage"]["completion_tokens"] == 7  # 6 bytes of text + 1 for the choice
